/// A contiguous run of ports, as written in the config (`104` or `"10123-10124"`).
public struct PortRange: Hashable, Sendable, CustomStringConvertible {
    public let lower: UInt16
    public let upper: UInt16

    public init(_ port: UInt16) { self.init(lower: port, upper: port) }

    /// Callers check `lower <= upper`; the loader reports reversed ranges as errors.
    public init(lower: UInt16, upper: UInt16) {
        self.lower = lower
        self.upper = upper
    }

    public var ports: ClosedRange<UInt16> { lower...upper }
    public var count: Int { Int(upper) - Int(lower) + 1 }

    public func overlaps(_ other: PortRange) -> Bool {
        lower <= other.upper && other.lower <= upper
    }

    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }
}

extension Array where Element == PortRange {
    /// Every port, in the order written.
    public var allPorts: [UInt16] { flatMap { range in [UInt16](range.lower...range.upper) } }

    public var summary: String { map(\.description).joined(separator: ",") }
}
