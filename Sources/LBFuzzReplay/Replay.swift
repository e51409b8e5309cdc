import Foundation

/// A fuzz target built without libFuzzer (a normal build) runs the inputs named on its command line through the
/// same entry point: the seed corpus and every crash kept as a regression case. Shared by the four targets.
public enum FuzzReplay {
    public static func run(_ name: String, _ fuzz: (UnsafePointer<UInt8>, Int) -> CInt) throws {
        for path in CommandLine.arguments.dropFirst() {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            let storage = bytes.isEmpty ? [0] : bytes  // a valid pointer even for an empty input
            _ = storage.withUnsafeBufferPointer { buffer in
                buffer.baseAddress.map { fuzz($0, bytes.count) }
            }
        }
        print("\(name): \(CommandLine.arguments.count - 1) inputs replayed")
    }
}
