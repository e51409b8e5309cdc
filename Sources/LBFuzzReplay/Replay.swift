import Foundation

/// A fuzz target built without libFuzzer (a normal build) runs the inputs named on its command line through the
/// same entry point: the seed corpus and every crash kept as a regression case. Shared by the five targets.
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

/// `input` cut into pieces of 1 to `largest` (a power of two) bytes, the sizes drawn from a generator seeded by the
/// input's length and `mixing`, so each input is always cut the same way: how the HTTP targets split what a peer
/// sends into reads.
public func pieces(of input: [UInt8], mixing: UInt32, largest: Int) -> [ArraySlice<UInt8>] {
    let shift = UInt32(32 - largest.trailingZeroBitCount)
    var seed = UInt32(truncatingIfNeeded: input.count) &* mixing | 1
    var pieces: [ArraySlice<UInt8>] = []
    var offset = 0
    while offset < input.count {
        seed = seed &* 1664525 &+ 1013904223
        let end = min(input.count, offset + 1 + Int(seed >> shift))
        pieces.append(input[offset..<end])
        offset = end
    }
    return pieces
}
