import LBTestSupport
import Testing
@testable import LBHealth

/// The DICOM and HL7 conversations byte by byte (PS3.8 PDUs, MLLP framing), without a peer.
@Suite("DICOM C-ECHO and HL7 MLLP conversations (pure)")
struct ClinicalProbeTests {
    @Test func associateRequestLayout() {
        let pdu = DICOMEchoConversation.associateRequest(callingAE: "LB-CHECK", calledAE: "PACS")
        #expect(Array(pdu[0..<2]) == [0x01, 0x00], "A-ASSOCIATE-RQ")
        let length = Int(pdu[2]) << 24 | Int(pdu[3]) << 16 | Int(pdu[4]) << 8 | Int(pdu[5])
        #expect(length == pdu.count - 6)
        #expect(Array(pdu[6..<8]) == [0x00, 0x01], "protocol version 1")
        #expect(String(decoding: pdu[10..<26], as: UTF8.self) == "PACS            ", "called AE, space padded")
        #expect(String(decoding: pdu[26..<42], as: UTF8.self) == "LB-CHECK        ")
        #expect(pdu[42..<74].allSatisfy { $0 == 0 })
        // Application context item, then the presentation context with Verification and Implicit VR LE.
        #expect(pdu[74] == 0x10)
        let text = String(decoding: pdu, as: UTF8.self)
        #expect(text.contains("1.2.840.10008.3.1.1.1"))
        #expect(text.contains("1.2.840.10008.1.1") && text.contains("1.2.840.10008.1.2"))
    }

    @Test func echoRequestCommandSet() {
        let pdu = DICOMEchoConversation.echoRequest(messageID: 7)
        #expect(pdu[0] == 0x04, "P-DATA-TF")
        #expect(Array(pdu[10..<12]) == [1, 0x03], "presentation context 1; command, last fragment")
        let elements = DICOMEchoConversation.commandElements(pdu[12...])
        #expect(Array(elements[0x0100] ?? []) == [0x30, 0x00], "C-ECHO-RQ")
        #expect(Array(elements[0x0110] ?? []) == [7, 0])
        #expect(Array(elements[0x0800] ?? []) == [0x01, 0x01], "no data set")
        #expect(elements[0x0002].map { Array($0) } == Array("1.2.840.10008.1.1".utf8) + [0], "UID padded to even length")
        let groupLength = elements[0x0000].map { Array($0) } ?? []
        #expect(groupLength == DICOMEchoConversation.le32(pdu.count - 12 - 12))
    }

    func acceptPDU(result: UInt8) -> [UInt8] {
        let context = DICOMEchoConversation.item(0x21, [1, 0, result, 0] + DICOMEchoConversation.item(0x40, Array("1.2.840.10008.1.2".utf8)))
        return DICOMEchoConversation.pdu(0x02, [0, 1, 0, 0] + [UInt8](repeating: 0x20, count: 32) + [UInt8](repeating: 0, count: 32) + context)
    }

    func echoResponse(status: UInt16) -> [UInt8] {
        let rest = DICOMEchoConversation.element(0x0100, DICOMEchoConversation.le16(0x8030))
            + DICOMEchoConversation.element(0x0900, DICOMEchoConversation.le16(status))
        let command = DICOMEchoConversation.element(0x0000, DICOMEchoConversation.le32(rest.count)) + rest
        return DICOMEchoConversation.pdu(0x04, DICOMEchoConversation.be32(command.count + 2) + [1, 0x03] + command)
    }

    @Test func successfulEchoReleasesAndPasses() {
        var conversation = DICOMEchoConversation(callingAE: "LB", calledAE: "PACS")
        var input = acceptPDU(result: 0)
        #expect(conversation.receive(&input) == .send(DICOMEchoConversation.echoRequest()))
        input = Array(echoResponse(status: 0).prefix(10))
        #expect(conversation.receive(&input) == .needMore, "a PDU split across reads waits for the rest")
        input += echoResponse(status: 0).dropFirst(10)
        #expect(conversation.receive(&input) == .send(DICOMEchoConversation.releaseRequest))
        input = DICOMEchoConversation.pdu(0x06, [0, 0, 0, 0])
        #expect(conversation.receive(&input) == .finish(.pass))
    }

    @Test func failuresCarryTheReason() {
        var rejected = DICOMEchoConversation(callingAE: "LB", calledAE: "PACS")
        var input = DICOMEchoConversation.pdu(0x03, [0, 1, 1, 7])
        #expect(rejected.receive(&input) == .finish(.fail("association rejected: called AE title not recognized")))

        var refused = DICOMEchoConversation(callingAE: "LB", calledAE: "PACS")
        input = acceptPDU(result: 3)
        #expect(refused.receive(&input) == .finish(.fail("Verification refused: abstract syntax (Verification) not supported"),
                                                  send: DICOMEchoConversation.releaseRequest))

        var failing = DICOMEchoConversation(callingAE: "LB", calledAE: "PACS")
        input = acceptPDU(result: 0)
        _ = failing.receive(&input)
        input = echoResponse(status: 0x0110)
        _ = failing.receive(&input)
        input = DICOMEchoConversation.pdu(0x06, [0, 0, 0, 0])
        #expect(failing.receive(&input) == .finish(.fail("C-ECHO status 0x0110")))

        var aborted = DICOMEchoConversation(callingAE: "LB", calledAE: "PACS")
        input = DICOMEchoConversation.pdu(0x07, [0, 0, 2, 0])
        #expect(aborted.receive(&input) == .finish(.fail("association aborted by the service provider (A-ABORT)")))
    }

    @Test func hl7FramingAndAcknowledgement() {
        let conversation = HL7MLLPConversation(message: "MSH|^~\\&|LB|LB|E|H|20260101||QRY^A19|1|P|2.3\nQRD|x")
        #expect(conversation.opening.first == 0x0B && Array(conversation.opening.suffix(2)) == [0x1C, 0x0D])
        #expect(!conversation.opening.contains(0x0A), "segments end with carriage returns only")
        var accepting = conversation
        var input: [UInt8] = [0x0B] + Array("MSH|^~\\&|E|H|LB|LB|20260101||ACK|1|P|2.3\rMSA|AA|1\r".utf8)
        #expect(accepting.receive(&input) == .needMore, "until the end of the frame")
        input += [0x1C, 0x0D]
        #expect(accepting.receive(&input) == .finish(.pass))
        #expect(HL7MLLPConversation.evaluate("MSH|x\rMSA|CA|1") == .pass)
        #expect(HL7MLLPConversation.evaluate("MSH|x\rMSA|AR|1|engine busy") == .fail("HL7 acknowledgement AR: engine busy"))
        #expect(HL7MLLPConversation.evaluate("MSH|x") == .fail("ACK without an MSA segment"))
    }
}
