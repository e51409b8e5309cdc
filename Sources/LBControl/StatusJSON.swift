import Foundation

/// The one JSON rendering of the status: `lbctl status --format json` prints it and lbd's `/status.json` serves it,
/// byte for byte the same schema, so a script written against one reads the other.
public enum StatusJSON {
    public static func encode(_ services: [ServiceStatus]) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // Encoding plain value types cannot fail; an empty list is the honest fallback if it ever did.
        return (try? encoder.encode(services)) ?? Data("[]".utf8)
    }
}
