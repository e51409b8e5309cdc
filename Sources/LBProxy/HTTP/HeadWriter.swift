import NIOCore

/// Writes the pieces of a message head (the request or status line, field lines, lb's own fields) straight into a
/// buffer's free bytes, so that a whole head costs one ByteBuffer call. Each of ByteBuffer's write calls checks the
/// capacity, that the storage is not shared, and (in SwiftNIO's build) exclusive access: about 240 instructions a
/// call, measured in process, as much as copying a short field; a forwarded head was some twenty such calls.
///
/// The writer never writes past the room it was given: what does not fit is only counted, and
/// `ByteBuffer.writeHead` then writes the head again with room for all of it. A size estimated short therefore costs
/// a second pass, never a byte lost or written out of bounds.
struct HeadWriter {
    private let base: UnsafeMutableRawPointer?
    private let capacity: Int
    /// The bytes the pieces so far take; more than `capacity` if they did not all fit.
    private(set) var needed = 0

    init(_ room: UnsafeMutableRawBufferPointer) {
        base = room.baseAddress
        capacity = room.count
    }

    /// Whether every piece so far was written.
    var fits: Bool { needed <= capacity }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        let end = needed + bytes.count
        if end <= capacity, let base, let source = bytes.baseAddress {
            (base + needed).copyMemory(from: source, byteCount: bytes.count)
        }
        needed = end
    }

    mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { append(UnsafeRawBufferPointer($0)) }
    }

    mutating func append(_ text: String) {
        // Native strings (all that the parsers and the config make) are contiguous; any other is copied first.
        if text.utf8.withContiguousStorageIfAvailable({ append(UnsafeRawBufferPointer($0)) }) == nil {
            Array(text.utf8).withUnsafeBytes { append($0) }
        }
    }

    mutating func append(byte: UInt8) {
        if needed < capacity, let base { base.storeBytes(of: byte, toByteOffset: needed, as: UInt8.self) }
        needed += 1
    }

    /// `value` in decimal (a length, a status code); negative values are not written by lb.
    mutating func append(decimal value: Int) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for any Int's digits
        withUnsafeMutableBytes(of: &digits) { digits in
            var rest = UInt(value.magnitude), start = digits.count
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest % 10)
                rest /= 10
            } while rest > 0
            append(UnsafeRawBufferPointer(rebasing: digits[start...]))
        }
    }
}

extension ByteBuffer {
    /// Appends what `write` writes, given room for at least `estimate` bytes; if that was short, `write` runs once
    /// more with room for all it needed. `write` must write the same bytes each time it runs.
    mutating func writeHead(estimate: Int, _ write: (inout HeadWriter) -> Void) {
        var needed = 0, fitted = false
        writeWithUnsafeMutableBytes(minimumWritableBytes: estimate) { room in
            var writer = HeadWriter(room)
            write(&writer)
            needed = writer.needed
            fitted = writer.fits
            return fitted ? needed : 0
        }
        guard !fitted else { return }
        writeWithUnsafeMutableBytes(minimumWritableBytes: needed) { room in
            var writer = HeadWriter(room)
            write(&writer)
            return min(writer.needed, room.count)
        }
    }
}
