import CFuzz
import Foundation
import LBConfig
import LBHealth
import LBFuzzReplay

/// libFuzzer target (scripts/fuzz check-reply): a real server's answer to a DICOM C-ECHO or HL7 MLLP health check,
/// delivered in arbitrary pieces. The first byte picks the protocol (even: DICOM, odd: HL7), the second the piece
/// size. The conversation must never crash, must consume input or finish whenever it is not waiting for more, and
/// must reach an end (a result, or waiting) within a bounded number of steps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckReply(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard bytes.count >= 2 else { return 0 }
    let piece = max(1, Int(bytes[1]))
    let reply = Array(bytes.dropFirst(2))
    if bytes[0] % 2 == 0 {
        var conversation = DICOMEchoConversation(callingAE: HealthCheck.DICOMEchoProbe.defaultCallingAE,
                                                 calledAE: HealthCheck.DICOMEchoProbe.defaultCalledAE)
        drive(&conversation, reply, piece: piece)
    } else {
        var conversation = HL7MLLPConversation(message: HealthCheck.HL7Probe().message)
        drive(&conversation, reply, piece: piece)
    }
    return 0
}

func drive<C: ProbeConversation>(_ conversation: inout C, _ reply: [UInt8], piece: Int) {
    var input: [UInt8] = []
    var offset = 0
    var steps = 0
    while offset < reply.count {
        input += reply[offset..<min(offset + piece, reply.count)]
        offset += piece
        while true {
            steps += 1
            guard steps < 100_000 else { fatalError("no end after \(steps) steps") }
            let before = input.count
            switch conversation.receive(&input) {
            case .needMore:
                guard input.count <= before else { fatalError("input grew") }
                break
            case .send:
                continue
            case .finish:
                return
            }
            break
        }
    }
}

#if LB_FUZZ
/// The entry point SwiftPM links as `main`: libFuzzer's driver.
@_cdecl("lb_fuzz_check_reply_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    lb_fuzz_run(argc, argv) { data, size in fuzzCheckReply(data!, size) }
}
#else
/// Without libFuzzer (a normal build): replays the inputs named on the command line (seed corpus, kept crashes).
@main
struct ReplayCheckReplies {
    static func main() throws { try FuzzReplay.run("check-reply", fuzzCheckReply) }
}
#endif
