import CFuzz
import Foundation
import LBIPVS
import LBFuzzReplay

/// libFuzzer target (scripts/fuzz netlink-reply): bytes as the kernel's IPVS netlink replies. Every decoder lb
/// applies to them (attribute runs, services, destinations, counters, timeouts, info, sync daemon, batch
/// acknowledgements) must return a value or nil, never crash or read outside the datagram; parsed attributes lie
/// inside the input, in order; a decoded service survives lb's own encoding unchanged.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetlinkReply(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let slice = bytes[...]
    if let attributes = NetlinkAttributes.parse(slice) {
        var previousEnd = slice.startIndex
        for attribute in attributes {
            guard attribute.payload.startIndex >= previousEnd, attribute.payload.endIndex <= slice.endIndex else {
                fatalError("attribute outside the input or out of order")
            }
            previousEnd = attribute.payload.endIndex
        }
    }
    if let service = IPVSCodec.decodeService(slice) {
        let encoded = IPVSCodec.message(service: IPVSCodec.service(service)).bytes
        guard let again = IPVSCodec.decodeService(encoded[...]), again == service else {
            fatalError("service does not survive encoding: \(service)")
        }
    }
    _ = IPVSCodec.decodeServiceCounters(slice)
    _ = IPVSCodec.decodeTimeouts(slice)
    _ = IPVSCodec.decodeInfo(slice)
    _ = IPVSCodec.decodeDaemon(slice)
    _ = IPVSCodec.decodeDestination(slice, serviceFamily: 2)
    _ = IPVSCodec.decodeDestination(slice, serviceFamily: 10)
    _ = NetlinkFrame.acknowledgements(in: slice)
    return 0
}

#if LB_FUZZ
/// The entry point SwiftPM links as `main`: libFuzzer's driver.
@_cdecl("lb_fuzz_netlink_reply_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    lb_fuzz_run(argc, argv) { data, size in fuzzNetlinkReply(data!, size) }
}
#else
/// Without libFuzzer (a normal build): replays the inputs named on the command line (seed corpus, kept crashes).
@main
struct ReplayNetlinkReplies {
    static func main() throws { try FuzzReplay.run("netlink-reply", fuzzNetlinkReply) }
}
#endif
