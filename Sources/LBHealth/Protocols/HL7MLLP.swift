/// An HL7 v2 message framed in MLLP (0x0B message 0x1C 0x0D); passes when the ACK's MSA-1 is AA or CA.
package struct HL7MLLPConversation: ProbeConversation {
    package let opening: [UInt8]

    package init(message: String) {
        // HL7 separates segments with carriage returns; a config may have written newlines.
        let text = message.replacingOccurrences(of: "\r\n", with: "\r").replacingOccurrences(of: "\n", with: "\r")
        opening = [0x0B] + Array(text.utf8) + [0x1C, 0x0D]
    }

    package mutating func receive(_ input: inout [UInt8]) -> ConversationStep {
        guard let start = input.firstIndex(of: 0x0B) else { return input.count > 0 ? .finish(.fail("answer is not MLLP-framed")) : .needMore }
        guard let end = input[start...].firstIndex(of: 0x1C), end + 1 < input.count else { return .needMore }
        let message = String(decoding: input[(start + 1)..<end], as: UTF8.self)
        input.removeAll()
        return .finish(Self.evaluate(message))
    }

    /// The acknowledgement code in MSA-1, and MSA-3's text when refused.
    static func evaluate(_ message: String) -> ProbeResult {
        let segments = message.split(whereSeparator: { $0 == "\r" || $0 == "\n" })
        guard let msa = segments.first(where: { $0.hasPrefix("MSA|") }) else { return .fail("ACK without an MSA segment") }
        let fields = msa.split(separator: "|", omittingEmptySubsequences: false)
        let code = fields.count > 1 ? String(fields[1]) : ""
        switch code {
        case "AA", "CA": return .pass
        default:
            let text = fields.count > 3 && !fields[3].isEmpty ? ": \(fields[3])" : ""
            return .fail("HL7 acknowledgement \(code.isEmpty ? "missing" : code)\(text)")
        }
    }
}
