import NIOCore

/// What lb's two head scanners (`RequestHeadScanner`, `ResponseHeadScanner`) share: the check of a head's bytes up
/// to its empty line, the reading of plain field lines, and a plain Content-Length.

/// The outcome of looking at the start of what a peer sent, for either scanner.
package enum HeadScan<Head: Equatable>: Equatable {
    /// A complete head of the simple form; its fields are in the scanner's `fields`.
    case simple(Head)
    /// Every byte so far could begin a simple head; more are needed.
    case incomplete
    /// Not of the simple form (or not an HTTP message at all): NIO's llhttp-based parser reads it, and refuses it if
    /// it must.
    case notSimple
}

/// One field line of a scanned head: where its name and its value (without the spaces and tabs before it) are, as
/// offsets from the start of the head.
package struct FieldSpan: Equatable, Sendable {
    package var name: Range<Int>
    package var value: Range<Int>
}

extension Array where Element == FieldSpan {
    /// Empties the list for the next head, keeping its storage. On a scanner's first head it makes room for the
    /// dozen or so fields a head usually has (at most `maxFields`) at once, rather than growing four times.
    mutating func startHead(maxFields: Int) {
        if capacity == 0 { reserveCapacity(Swift.min(16, maxFields)) } else { removeAll(keepingCapacity: true) }
    }
}

/// The first pass over a head: only visible ASCII, spaces, tabs and CR LF line ends, up to the empty line. Each byte
/// is checked once: a head arriving in pieces resumes where the last look stopped.
struct HeadBytesCheck {
    enum Outcome {
        /// The head ends (after its empty line) at this offset.
        case end(Int)
        /// Every byte so far could begin a plain head; more are needed.
        case incomplete
        /// A byte or line end that no plain head has, or a head larger than the limit.
        case notPlain
    }

    private var checked = 0

    /// The bytes before were a head that was consumed: the next bytes begin a new one.
    mutating func reset() { checked = 0 }

    mutating func findEnd(_ bytes: UnsafeRawBufferPointer, maxHeadBytes: Int) -> Outcome {
        var index = checked
        while index < bytes.count {
            // Most of a head is text between line ends, passed eight bytes at a time up to the first byte that is
            // not a space or visible character (a line end, tab, control or non-ASCII byte), which is checked below.
            // Not after a CR, which only an LF may follow.
            if index + 8 <= bytes.count, index == 0 || bytes[index - 1] != ASCII.cr {
                let others = Self.notVisible(bytes.word(at: index))
                guard others != 0 else {
                    index += 8
                    continue
                }
                index += others.trailingZeroBitCount >> 3
            }
            let byte = bytes[index]
            if byte == ASCII.lf {
                guard index > 0, bytes[index - 1] == ASCII.cr else { return .notPlain }
                if index >= 3, bytes[index - 2] == ASCII.lf, bytes[index - 3] == ASCII.cr {
                    checked = index + 1
                    return index + 1 <= maxHeadBytes ? .end(index + 1) : .notPlain
                }
            } else {
                if index > 0, bytes[index - 1] == ASCII.cr { return .notPlain }  // a CR not ending a line
                guard (byte >= 0x20 && byte < 0x7F) || byte == ASCII.tab || byte == ASCII.cr else { return .notPlain }
            }
            index += 1
        }
        checked = index
        return bytes.count > maxHeadBytes ? .notPlain : .incomplete
    }

    /// The high bit of each byte of `word` (first byte lowest) that is not a space or visible ASCII character
    /// (0x20 to 0x7E), and possibly of bytes after such a byte: zero when all eight are, and the lowest bit set is
    /// always that of the first byte that is not. Only a byte below 0x20 borrows when 0x20 is taken from it, and
    /// only a byte above 0x7E has the high bit or gets it when 1 is added (only 0xFF carries).
    @inline(__always)
    static func notVisible(_ word: UInt64) -> UInt64 {
        let high: UInt64 = 0x8080_8080_8080_8080
        let belowSpace = (word &- 0x2020_2020_2020_2020) & ~word & high
        let deleteOrAbove = ((word &+ 0x0101_0101_0101_0101) | word) & high
        return belowSpace | deleteOrAbove
    }
}

/// The field lines of `head` (whose bytes passed `HeadBytesCheck`) from `start` to its empty line, each
/// `name ":" OWS value CRLF` with a token name, handed to `body` with its position among them; false as soon as a
/// line is not of that form or `body` returns false. A value's spaces and tabs at the end stay part of it, as
/// llhttp reads it.
func forEachFieldLine(of head: UnsafeRawBufferPointer, from start: Int, _ body: (FieldSpan) -> Bool) -> Bool {
    var index = start
    while index < head.count - 2 {  // up to the empty line
        let nameStart = index
        while isTokenByte(head[index]) { index += 1 }
        guard index > nameStart, head[index] == ASCII.colon else { return false }
        let name = nameStart..<index
        index += 1
        while head[index] == ASCII.space || head[index] == ASCII.tab { index += 1 }
        let valueStart = index
        index = firstCR(in: head, from: index)
        let value = valueStart..<index
        index += 2
        guard body(FieldSpan(name: name, value: value)) else { return false }
    }
    return true
}

extension UnsafeRawBufferPointer {
    /// The eight bytes at `offset` as one word, the first byte lowest whatever the machine's byte order: the word
    /// tests below rely on it (the lowest byte they mark is the first that qualifies).
    @inline(__always)
    func word(at offset: Int) -> UInt64 {
        UInt64(littleEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}

/// The offset of the first CR in `head` from `start` (a head that passed `HeadBytesCheck` has one before its end),
/// eight bytes at a time: in a word XORed with CRs a CR is a zero byte, and the lowest byte the zero-byte test
/// marks is the first zero (a marked byte above a zero may be a borrow's).
@inline(__always)
func firstCR(in head: UnsafeRawBufferPointer, from start: Int) -> Int {
    var index = start
    while index + 8 <= head.count {
        let word = head.word(at: index) ^ 0x0D0D_0D0D_0D0D_0D0D
        let zeros = (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080
        if zeros != 0 { return index + zeros.trailingZeroBitCount >> 3 }
        index += 8
    }
    while head[index] != ASCII.cr { index += 1 }
    return index
}

/// The hop-by-hop fields but Connection and Keep-Alive, and a field named "close" (which `Connection: close` would
/// remove): a head with one of them is left to NIO's parser and lb's full handling.
func leavesSimpleForm(_ name: UnsafeRawBufferPointer) -> Bool {
    switch name.count {
    case 2: name.equalsIgnoringASCIICase("te")
    case 5: name.equalsIgnoringASCIICase("close")
    case 7: name.equalsIgnoringASCIICase("trailer") || name.equalsIgnoringASCIICase("upgrade")
    case 16: name.equalsIgnoringASCIICase("proxy-connection")
    case 17: name.equalsIgnoringASCIICase("transfer-encoding")
    case 18: name.equalsIgnoringASCIICase("proxy-authenticate")
    case 19: name.equalsIgnoringASCIICase("proxy-authorization")
    default: false
    }
}

/// The one `Connection` value the simple form allows: true for `close`, false for `keep-alive`, nil for anything
/// else (a list, or a token naming a field, is left to NIO's parser).
func connectionCloses(_ value: UnsafeRawBufferPointer) -> Bool? {
    if value.equalsIgnoringASCIICase("close") { return true }
    if value.equalsIgnoringASCIICase("keep-alive") { return false }
    return nil
}

/// Whether the connection stays open after a message, as llhttp reads it: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive` (`closes`: the `Connection` field's reading, nil without one).
func keepsAlive(isHTTP10: Bool, connectionCloses closes: Bool?) -> Bool {
    isHTTP10 ? closes == false : closes != true
}

extension ByteBuffer {
    /// Appends a new read to the bytes a reader holds unread (the part of a head, or what waits behind it): what
    /// was passed on goes first, so the buffer never holds more than the unread part (with slices of it still held
    /// elsewhere, only that part is copied). Without unread bytes the read is taken as it is, uncopied.
    mutating func appendAsUnread(_ read: ByteBuffer) {
        if readableBytes == 0 {
            self = read
        } else {
            var read = read
            discardReadBytes()
            writeBuffer(&read)
        }
    }
}

/// 1 to 18 decimal digits, without a leading zero unless it is the only one (lb forwards a length as it came only
/// in this form), or nil.
func plainLength(_ digits: UnsafeRawBufferPointer) -> Int? {
    guard !digits.isEmpty, digits.count <= 18, digits[0] != ASCII.zero || digits.count == 1 else { return nil }
    var length = 0
    for digit in digits {
        guard digit >= ASCII.zero, digit <= ASCII.zero + 9 else { return nil }
        length = length * 10 + Int(digit - ASCII.zero)
    }
    return length
}

/// Whether the bytes at `index` are `HTTP/1.1` or `HTTP/1.0`: nil if neither, else whether it is 1.0.
func httpVersionIsHTTP10(_ head: UnsafeRawBufferPointer, at index: Int) -> Bool? {
    guard index + 8 <= head.count, head[index] == ASCII.h, head[index + 1] == ASCII.t, head[index + 2] == ASCII.t,
          head[index + 3] == ASCII.p,
          head[index + 4] == ASCII.slash, head[index + 5] == ASCII.one, head[index + 6] == ASCII.dot,
          head[index + 7] == ASCII.one || head[index + 7] == ASCII.zero else { return nil }
    return head[index + 7] == ASCII.zero
}

/// The bytes the scanners look for.
enum ASCII {
    static let cr: UInt8 = 13, lf: UInt8 = 10, tab: UInt8 = 9, space: UInt8 = 32, colon = UInt8(ascii: ":"),
               slash = UInt8(ascii: "/"), comma = UInt8(ascii: ","), at = UInt8(ascii: "@"), dot = UInt8(ascii: "."),
               zero = UInt8(ascii: "0"), one = UInt8(ascii: "1"), h = UInt8(ascii: "H"), t = UInt8(ascii: "T"),
               p = UInt8(ascii: "P")
}

/// tchar (RFC 9110 §5.6.2): "!#$%&'*+-.^_`|~", digits and letters. A bit per byte, bytes 0-63 in one word and
/// 64-127 in the other (none above 127): a name's bytes are tested with a shift instead of a chain of range tests
/// (the tests check the masks against the set spelled out).
@inline(__always) func isTokenByte(_ byte: UInt8) -> Bool {
    let mask: UInt64 = byte < 64 ? 0x03FF_6CFA_0000_0000 : 0x57FF_FFFF_C7FF_FFFE
    return byte < 128 && (mask >> (byte & 63)) & 1 == 1
}
