@testable import LBProxy
import NIOCore
import Testing

/// `HeadWriter` writes a head's pieces straight into a buffer's free bytes; `ByteBuffer.writeHead` gives it room
/// and, when the room estimated was short, writes the head again with room for all of it. Its bytes must be exactly
/// those ByteBuffer's own write calls give, whatever the estimate, and nothing already in the buffer or shared with
/// another buffer may change.
@Suite("Head writer")
struct HeadWriterTests {
    enum Piece {
        case staticText(StaticString)
        case text(String)
        case bytes([UInt8])
        case byte(UInt8)
        case decimal(Int)
    }

    static func written(_ pieces: [Piece], estimate: Int, after prefix: String = "") -> ByteBuffer {
        var buffer = ByteBuffer(string: prefix)
        buffer.writeHead(estimate: estimate) { out in
            for piece in pieces {
                switch piece {
                case .staticText(let text): out.append(text)
                case .text(let text): out.append(text)
                case .bytes(let bytes): bytes.withUnsafeBytes { out.append($0) }
                case .byte(let byte): out.append(byte: byte)
                case .decimal(let value): out.append(decimal: value)
                }
            }
        }
        return buffer
    }

    /// The same pieces through ByteBuffer's own write calls.
    static func reference(_ pieces: [Piece], after prefix: String = "") -> ByteBuffer {
        var buffer = ByteBuffer(string: prefix)
        for piece in pieces {
            switch piece {
            case .staticText(let text): buffer.writeStaticString(text)
            case .text(let text): buffer.writeString(text)
            case .bytes(let bytes): buffer.writeBytes(bytes)
            case .byte(let byte): buffer.writeInteger(byte)
            case .decimal(let value): buffer.writeString(String(value))
            }
        }
        return buffer
    }

    static let statusLine: [Piece] = [.staticText("HTTP/1.1 "), .decimal(200), .byte(UInt8(ascii: " ")), .text("OK"),
                                      .staticText("\r\n"), .staticText("Content-Length: "), .decimal(0), .staticText("\r\n"),
                                      .text("Set-Cookie: LBSRV=0aade72225f76924; Path=/"), .bytes(Array("\r\n\r\n".utf8))]

    @Test func writesWhatByteBuffersOwnCallsWriteWhateverTheEstimate() {
        let expected = Self.reference(Self.statusLine, after: "kept ")
        // Short by everything, short by one, exact, and generous: the second pass covers the short ones.
        let size = expected.readableBytes - 5
        for estimate in [0, 1, size - 1, size, size + 100] {
            let buffer = Self.written(Self.statusLine, estimate: estimate, after: "kept ")
            #expect(buffer == expected, "estimate \(estimate): \(String(buffer: buffer).debugDescription)")
        }
    }

    @Test func decimalsOfEveryLength() {
        for value in [0, 7, 10, 99, 100, 65535, 1_000_000_007, Int.max] {
            #expect(Self.written([.decimal(value)], estimate: 1) == Self.reference([.decimal(value)]), "\(value)")
        }
    }

    @Test func randomHeadsAndEstimatesAgreeWithTheReference() {
        var random = SystemRandomNumberGenerator()
        for round in 0..<2_000 {
            var pieces: [Piece] = []
            for _ in 0..<Int.random(in: 0...12, using: &random) {
                switch Int.random(in: 0..<5, using: &random) {
                case 0: pieces.append(.staticText(": "))
                case 1: pieces.append(.text(String(repeating: "v", count: Int.random(in: 0...300, using: &random))))
                case 2: pieces.append(.bytes((0..<Int.random(in: 0...40, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }))
                case 3: pieces.append(.byte(UInt8.random(in: 0...255, using: &random)))
                default: pieces.append(.decimal(Int.random(in: 0...Int.max, using: &random)))
                }
            }
            let expected = Self.reference(pieces)
            let estimate = Int.random(in: 0...(expected.readableBytes + 8), using: &random)
            let buffer = Self.written(pieces, estimate: estimate)
            #expect(buffer == expected, "round \(round), estimate \(estimate)")
            if buffer != expected { return }
        }
    }

    /// A buffer that shares its storage (a head still queued for the socket) is copied before the head is written,
    /// as ByteBuffer's own calls do: the other holder's bytes do not change.
    @Test func sharedStorageIsNotWrittenOver() {
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        buffer.writeString("first head")
        let queued = buffer
        buffer.clear()
        buffer.writeHead(estimate: 20) { $0.append("second head, longer") }
        #expect(String(buffer: queued) == "first head")
        #expect(String(buffer: buffer) == "second head, longer")
    }
}
