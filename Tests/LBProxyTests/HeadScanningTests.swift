@testable import LBProxy
import Testing

/// `HeadBytesCheck` passes eight bytes at a time over text between line ends: it must find the same end, and refuse
/// the same heads, as the byte-at-a-time rule it implements, however a head arrives.
@Suite("Head byte check: eight bytes at a time")
struct HeadBytesCheckTests {
    /// The rule one byte at a time (`HeadBytesCheck` before its fast path).
    struct OneByteAtATime {
        var checked = 0
        mutating func findEnd(_ bytes: [UInt8], maxHeadBytes: Int) -> String {
            var index = checked
            while index < bytes.count {
                let byte = bytes[index]
                if byte == ASCII.lf {
                    guard index > 0, bytes[index - 1] == ASCII.cr else { return "not plain" }
                    if index >= 3, bytes[index - 2] == ASCII.lf, bytes[index - 3] == ASCII.cr {
                        checked = index + 1
                        return index + 1 <= maxHeadBytes ? "end \(index + 1)" : "not plain"
                    }
                } else {
                    if index > 0, bytes[index - 1] == ASCII.cr { return "not plain" }
                    guard (byte >= 0x20 && byte < 0x7F) || byte == ASCII.tab || byte == ASCII.cr else { return "not plain" }
                }
                index += 1
            }
            checked = index
            return bytes.count > maxHeadBytes ? "not plain" : "incomplete"
        }
    }

    static func describe(_ outcome: HeadBytesCheck.Outcome) -> String {
        switch outcome {
        case .end(let end): "end \(end)"
        case .incomplete: "incomplete"
        case .notPlain: "not plain"
        }
    }

    @Test func everyByteValueInEveryPositionOfAWord() {
        for value in 0...255 {
            for position in 0..<8 {
                var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: 8)
                bytes[position] = UInt8(value)
                let word = bytes.withUnsafeBytes { $0.word(at: 0) }
                let marked = HeadBytesCheck.notVisible(word)
                #expect((marked == 0) == (0x20...0x7E).contains(value), "byte \(value) at \(position)")
                if marked != 0 { #expect(marked.trailingZeroBitCount >> 3 == position, "byte \(value) at \(position)") }
            }
        }
    }

    @Test func theFirstCRIsFoundEightBytesAtATime() {
        var random = SplitMix64(seed: 0x4352)
        for round in 0..<20_000 {
            // Any bytes (a borrow in the zero-byte test must not mark a byte before the CR), a CR somewhere after
            // the start, possibly more after it.
            var bytes = (0..<Int(random.next() % 40)).map { _ in UInt8(truncatingIfNeeded: random.next()) }.map { $0 == ASCII.cr ? 0x0C : $0 }
            let start = bytes.isEmpty ? 0 : Int(random.next() % UInt64(bytes.count))
            let cr = start + Int(random.next() % 20)
            while bytes.count <= cr { bytes.append(UInt8(truncatingIfNeeded: random.next()) | 0x80) }
            bytes[cr] = ASCII.cr
            if random.next() % 2 == 0 { bytes += [ASCII.cr, ASCII.lf] }
            let found = bytes.withUnsafeBytes { firstCR(in: $0, from: start) }
            #expect(found == cr, "round \(round): \(bytes) from \(start)")
            if found != cr { return }
        }
    }

    @Test func theSameOutcomeAsOneByteAtATimeForRandomHeadsInRandomPieces() {
        var random = SplitMix64(seed: 0x4845_4144)
        // Mostly field text and line ends, with every kind of byte the check refuses.
        let alphabet: [[UInt8]] = [Array("abcdefgh".utf8), Array("X-Field: value 1".utf8), Array(": ".utf8), [ASCII.cr, ASCII.lf],
                                   [ASCII.cr, ASCII.lf, ASCII.cr, ASCII.lf], [ASCII.cr], [ASCII.lf], [ASCII.tab],
                                   [0x00], [0x1F], [0x20], [0x7E], [0x7F], [0x80], [0xFF], Array("Content-Length: 12".utf8)]
        for round in 0..<20_000 {
            var bytes: [UInt8] = []
            let pieces = Int(random.next() % 24)
            for _ in 0..<pieces {
                // Plain text is far more common than anything else.
                bytes += random.next() % 3 == 0 ? random.pick(alphabet) : random.pick(Array(alphabet[0..<4]))
            }
            let maxHeadBytes = random.pick([16, 64, 8192])
            // The head arrives whole, or in two or three reads (each look resumes where the last stopped).
            var cuts = (0..<Int(random.next() % 3)).map { _ in bytes.isEmpty ? 0 : Int(random.next() % UInt64(bytes.count + 1)) }.sorted()
            cuts.append(bytes.count)
            var check = HeadBytesCheck()
            var reference = OneByteAtATime()
            for cut in cuts {
                let prefix = Array(bytes[..<cut])
                let fast = prefix.withUnsafeBytes { Self.describe(check.findEnd($0, maxHeadBytes: maxHeadBytes)) }
                let slow = reference.findEnd(prefix, maxHeadBytes: maxHeadBytes)
                #expect(fast == slow, "round \(round): \(prefix) (max \(maxHeadBytes))")
                if fast != slow { return }
                if slow != "incomplete" { break }
            }
        }
    }
}

/// The byte classes the scanners test with bit masks, against the sets as the RFCs spell them.
@Suite("Head byte classes")
struct HeadByteClassTests {
    static let letters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
    static let digits = Set("0123456789".utf8)

    /// tchar, RFC 9110 §5.6.2.
    @Test func tokenBytesAreTchar() {
        let tchar = Self.letters.union(Self.digits).union("!#$%&'*+-.^_`|~".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(isTokenByte(byte) == tchar.contains(byte), "byte \(byte)")
        }
    }

    /// pchar, "/" and "?" of RFC 3986 (§3.3, §3.4): unreserved, sub-delims, ":", "@", and "%" of pct-encoded.
    @Test func targetBytesArePathAndQueryCharacters() {
        let allowed = Self.letters.union(Self.digits).union("-._~".utf8).union("!$&'()*+,;=".utf8).union(":@/?%".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(isTargetByte(byte) == allowed.contains(byte), "byte \(byte)")
        }
    }

    /// The in-place comparison the scanners classify names with agrees with the generic one for every byte value in
    /// every position of the names lb looks for, and for shorter and longer names.
    @Test func inPlaceNameComparisonAgreesWithTheGenericOne() {
        let names: [StaticString] = ["host", "content-length", "x-forwarded-for", "te", "keep-alive", "close"]
        for name in names {
            let lower = name.withUTF8Buffer { Array($0) }
            for position in lower.indices {
                for byte in UInt8.min...UInt8.max {
                    var bytes = lower
                    bytes[position] = byte
                    let fast = bytes.withUnsafeBytes { $0.equalsIgnoringASCIICase(name) }
                    #expect(fast == bytesEqualIgnoringASCIICase(bytes, lowercase: lower), "\(name) with \(byte) at \(position)")
                }
            }
            #expect(Array(lower.dropLast()).withUnsafeBytes { $0.equalsIgnoringASCIICase(name) } == false)
            #expect((lower + [UInt8(ascii: "s")]).withUnsafeBytes { $0.equalsIgnoringASCIICase(name) } == false)
            #expect(Array(String(decoding: lower, as: UTF8.self).uppercased().utf8).withUnsafeBytes { $0.equalsIgnoringASCIICase(name) })
        }
        // One-character names too.
        #expect(Array("X".utf8).withUnsafeBytes { $0.equalsIgnoringASCIICase("x") })
        #expect(!Array("y".utf8).withUnsafeBytes { $0.equalsIgnoringASCIICase("x") })
    }
}
