import LBConfig

/// A DICOM Verification SCU (PS3.7 C-ECHO over the PS3.8 upper layer): associate proposing the Verification SOP
/// class with Implicit VR Little Endian, send C-ECHO-RQ, expect C-ECHO-RSP status 0x0000, release.
package struct DICOMEchoConversation: ProbeConversation {
    static let verificationSOPClass = "1.2.840.10008.1.1"
    static let implicitVRLittleEndian = "1.2.840.10008.1.2"
    static let applicationContext = "1.2.840.10008.3.1.1.1"
    /// lb's implementation class UID: a UUID-derived UID (2.25, ISO/IEC 9834-8).
    static let implementationClassUID = "2.25.160151236829113745364716536125413591631"
    static let presentationContextID: UInt8 = 1

    enum Phase { case associating, echoing, releasing }
    private var phase = Phase.associating
    private var echoResult: ProbeResult = .pass
    package let opening: [UInt8]

    package init(callingAE: String, calledAE: String) {
        opening = Self.associateRequest(callingAE: callingAE, calledAE: calledAE)
    }

    // MARK: Encoding (PS3.8 section 9.3)

    static func aeTitle(_ title: String) -> [UInt8] {
        let bytes = Array(title.utf8.prefix(16))
        return bytes + [UInt8](repeating: 0x20, count: 16 - bytes.count)
    }

    static func be16(_ value: Int) -> [UInt8] { [UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)] }
    static func be32(_ value: Int) -> [UInt8] { [UInt8(value >> 24 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)] }

    /// An item or sub-item: type, reserved byte, 16-bit length, value.
    static func item(_ type: UInt8, _ value: [UInt8]) -> [UInt8] { [type, 0] + be16(value.count) + value }

    static func pdu(_ type: UInt8, _ body: [UInt8]) -> [UInt8] { [type, 0] + be32(body.count) + body }

    static func associateRequest(callingAE: String, calledAE: String) -> [UInt8] {
        let presentationContext = item(0x20, [presentationContextID, 0, 0, 0]
            + item(0x30, Array(verificationSOPClass.utf8))
            + item(0x40, Array(implicitVRLittleEndian.utf8)))
        let userInformation = item(0x50, item(0x51, be32(16384))
            + item(0x52, Array(implementationClassUID.utf8))
            + item(0x55, Array("LB_CHECK".utf8)))
        let body = be16(1) + [0, 0] + aeTitle(calledAE) + aeTitle(callingAE) + [UInt8](repeating: 0, count: 32)
            + item(0x10, Array(applicationContext.utf8)) + presentationContext + userInformation
        return pdu(0x01, body)
    }

    /// One implicit-VR little-endian element of group 0000.
    static func element(_ element: UInt16, _ value: [UInt8]) -> [UInt8] {
        [0, 0, UInt8(element & 0xFF), UInt8(element >> 8)] + le32(value.count) + value
    }
    static func le16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8)] }
    static func le32(_ value: Int) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 24 & 0xFF)] }

    /// C-ECHO-RQ command set in one P-DATA-TF PDU (one PDV: command, last fragment).
    static func echoRequest(messageID: UInt16 = 1) -> [UInt8] {
        var uid = Array(verificationSOPClass.utf8)
        if uid.count % 2 == 1 { uid.append(0) }  // UI values are padded to even length with NUL
        let rest = element(0x0002, uid) + element(0x0100, le16(0x0030)) + element(0x0110, le16(messageID))
            + element(0x0800, le16(0x0101))
        let command = element(0x0000, le32(rest.count)) + rest
        let pdv = be32(command.count + 2) + [presentationContextID, 0x03] + command
        return pdu(0x04, pdv)
    }

    static let releaseRequest: [UInt8] = pdu(0x05, [0, 0, 0, 0])

    // MARK: Decoding

    /// Reason texts for A-ASSOCIATE-RJ (PS3.8 table 9-21).
    static func rejectReason(source: UInt8, reason: UInt8) -> String {
        switch (source, reason) {
        case (1, 2): return "application context name not supported"
        case (1, 3): return "calling AE title not recognized"
        case (1, 7): return "called AE title not recognized"
        case (1, _): return "rejected by the service user, no reason given"
        case (2, 2): return "protocol version not supported"
        case (2, _): return "rejected by the service provider (ACSE), no reason given"
        case (3, 1): return "temporary congestion"
        case (3, 2): return "local limit exceeded"
        default: return "rejected (source \(source), reason \(reason))"
        }
    }

    static func presentationResult(_ result: UInt8) -> String {
        switch result {
        case 1: return "user rejection"
        case 2: return "no reason"
        case 3: return "abstract syntax (Verification) not supported"
        case 4: return "transfer syntax (Implicit VR Little Endian) not supported"
        default: return "result \(result)"
        }
    }

    /// Command elements (group 0000) of a C-ECHO-RSP as tag → value bytes.
    static func commandElements(_ bytes: ArraySlice<UInt8>) -> [UInt16: ArraySlice<UInt8>] {
        var result: [UInt16: ArraySlice<UInt8>] = [:]
        var offset = bytes.startIndex
        while offset + 8 <= bytes.endIndex {
            let element = UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8
            let length = Int(bytes[offset + 4]) | Int(bytes[offset + 5]) << 8 | Int(bytes[offset + 6]) << 16 | Int(bytes[offset + 7]) << 24
            guard offset + 8 + length <= bytes.endIndex else { break }
            result[element] = bytes[(offset + 8)..<(offset + 8 + length)]
            offset += 8 + length
        }
        return result
    }

    package mutating func receive(_ input: inout [UInt8]) -> ConversationStep {
        guard input.count >= 6 else { return .needMore }
        let length = Int(input[2]) << 24 | Int(input[3]) << 16 | Int(input[4]) << 8 | Int(input[5])
        guard input.count >= 6 + length else { return .needMore }
        let type = input[0]
        let body = input[6..<(6 + length)]
        input.removeFirst(6 + length)
        switch (phase, type) {
        case (_, 0x07):
            let source = body.count >= 4 ? body[body.startIndex + 2] : 0
            return .finish(.fail("association aborted by the \(source == 2 ? "service provider" : "peer") (A-ABORT)"))
        case (.associating, 0x03):
            guard body.count >= 4 else { return .finish(.fail("malformed A-ASSOCIATE-RJ")) }
            let reason = Self.rejectReason(source: body[body.startIndex + 2], reason: body[body.startIndex + 3])
            return .finish(.fail("association rejected: \(reason)"))
        case (.associating, 0x02):
            // Variable items follow the 68-byte fixed part; find our presentation context's result.
            var offset = body.startIndex + 68
            while offset + 4 <= body.endIndex {
                let itemType = body[offset]
                let itemLength = Int(body[offset + 2]) << 8 | Int(body[offset + 3])
                if itemType == 0x21, itemLength >= 4, offset + 4 + itemLength <= body.endIndex {
                    let result = body[offset + 6]
                    guard result == 0 else {
                        return .finish(.fail("Verification refused: \(Self.presentationResult(result))"), send: Self.releaseRequest)
                    }
                    phase = .echoing
                    return .send(Self.echoRequest())
                }
                offset += 4 + itemLength
            }
            return .finish(.fail("A-ASSOCIATE-AC without a presentation context result"))
        case (.echoing, 0x04):
            // One or more PDVs: length (4), context id, control header, fragment.
            var offset = body.startIndex
            var command: [UInt8] = []
            while offset + 6 <= body.endIndex {
                let pdvLength = Int(body[offset]) << 24 | Int(body[offset + 1]) << 16 | Int(body[offset + 2]) << 8 | Int(body[offset + 3])
                guard pdvLength >= 2, offset + 4 + pdvLength <= body.endIndex else { break }
                if body[offset + 5] & 0x01 == 1 { command += body[(offset + 6)..<(offset + 4 + pdvLength)] }
                offset += 4 + pdvLength
            }
            let elements = Self.commandElements(command[...])
            guard let field = elements[0x0100], field.count == 2, UInt16(field[field.startIndex]) | UInt16(field[field.startIndex + 1]) << 8 == 0x8030,
                  let statusBytes = elements[0x0900], statusBytes.count == 2
            else { return .finish(.fail("no C-ECHO-RSP in the answer"), send: Self.releaseRequest) }
            let status = UInt16(statusBytes[statusBytes.startIndex]) | UInt16(statusBytes[statusBytes.startIndex + 1]) << 8
            echoResult = status == 0 ? .pass : .fail("C-ECHO status 0x\(String(status, radix: 16, uppercase: true).leftPadded(to: 4))")
            phase = .releasing
            return .send(Self.releaseRequest)
        case (.releasing, 0x06):
            return .finish(echoResult)
        default:
            return .finish(.fail("unexpected PDU type 0x\(String(type, radix: 16)) while \(phase)"))
        }
    }
}

