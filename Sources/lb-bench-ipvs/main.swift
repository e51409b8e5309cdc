// Programs a large IPVS table through lb's netlink client and through `ipvsadm -R`, in one run, and times both;
// then times single weight changes. Run inside scripts/ipvs-vm by scripts/bench/ipvs (it flushes the IPVS table).
//
//   lb-bench-ipvs [SERVICES] [DESTINATIONS] [ROUNDS]     defaults 1000 10 3
import Foundation
import Glibc
import LBConfig
import LBIPVS

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

let arguments = CommandLine.arguments.dropFirst().compactMap { Int($0) }
let serviceCount = arguments.count > 0 ? arguments[0] : 1000
let destinationCount = arguments.count > 1 ? arguments[1] : 10
let rounds = arguments.count > 2 ? arguments[2] : 3

// VIPs 10.100.x.y:80; real servers 10.0.1.1-200 (the dummy link's subnet), port varies so pairs are unique.
var entries: [(IPVSService, [IPVSDestination])] = []
for index in 0..<serviceCount {
    let vip = IPAddress.v4(0x0A64_0000 + UInt32(index + 1))
    let service = IPVSService(transport: .tcp, address: vip, port: 80, scheduler: "wlc")
    let destinations = (0..<destinationCount).map { d in
        IPVSDestination(address: .v4(0x0A00_0100 + UInt32((index + d) % 200 + 1)), port: UInt16(8000 + d),
                        forwarding: .masquerade, weight: 100)
    }
    entries.append((service, destinations))
}
let desired = IPVSTable(entries)
var rules = ""
for (service, destinations) in entries {
    rules += "-A -t \(service.address):\(service.port) -s \(service.scheduler)\n"
    for destination in destinations {
        rules += "-a -t \(service.address):\(service.port) -r \(destination.address):\(destination.port) -m -w \(destination.weight)\n"
    }
}

func ipvsadmRestore(_ rules: String) -> Int32 {
    guard let pipe = popen("/usr/sbin/ipvsadm -R", "w") else { return -1 }
    fputs(rules, pipe)
    return pclose(pipe)
}

do {
    let client = try IPVSClient()
    var lbTimes: [Double] = [], ipvsadmTimes: [Double] = [], changeTimes: [Double] = [], sendTimes: [Double] = [], wholeTimes: [Double] = []
    var messagesPerChange = 0
    for round in 1...rounds {
        try client.flush()
        var start = now()
        guard ipvsadmRestore(rules) == 0 else { print("ipvsadm -R failed"); exit(1) }
        ipvsadmTimes.append(now() - start)
        let afterIpvsadm = try client.table()

        try client.flush()
        start = now()
        // lb's whole path: dump what the kernel holds, plan, send the difference.
        let plan = IPVSPlanner.plan(from: try client.table(), to: desired, owned: [])
        try client.apply(plan.operations)
        lbTimes.append(now() - start)
        let afterLB = try client.table()
        guard afterLB == desired, afterIpvsadm == desired else {
            print("round \(round): the kernel's table differs from the one asked for"); exit(1)
        }

        // Single weight changes, planned against the table lb knows it applied (as the agent does).
        var current = desired
        let owned = Set(desired.services.keys)
        for change in 0..<20 {
            var next = current
            let key = next.services.keys.sorted()[change * 37 % serviceCount]
            next.services[key]?.destinations[change % destinationCount].weight = UInt32(10 + change)
            let whole = now()
            _ = IPVSPlanner.plan(from: current, to: next, owned: owned)
            wholeTimes.append(now() - whole)
            // The agent plans a health transition or an operator's drain for the VIP concerned only.
            let start = now()
            let operations = IPVSPlanner.plan(from: current, to: next, owned: owned, scope: [key]).operations
            let planned = now()
            try client.apply(operations)
            changeTimes.append(now() - start)
            sendTimes.append(now() - planned)
            messagesPerChange = max(messagesPerChange, operations.count)
            current = next
        }
        guard try client.table() == current else { print("weight changes not in the kernel"); exit(1) }
        print(String(format: "round %d: lb %.3f s, ipvsadm -R %.3f s", round, lbTimes.last!, ipvsadmTimes.last!))
    }
    try client.flush()
    let lb = median(lbTimes), ipvsadm = median(ipvsadmTimes)
    print(String(format: "table: %d services x %d destinations (%d messages)", serviceCount, destinationCount,
                 serviceCount * (destinationCount + 1)))
    print(String(format: "program from empty, median of %d: lb %.3f s [%.3f-%.3f], ipvsadm -R %.3f s [%.3f-%.3f], ratio lb/ipvsadm %.2f",
                 rounds, lb, lbTimes.min()!, lbTimes.max()!, ipvsadm, ipvsadmTimes.min()!, ipvsadmTimes.max()!, lb / ipvsadm))
    print(String(format: "single weight change (plan for its VIP + send): median %.2f ms [%.2f-%.2f] over %d changes, %d message(s) each",
                 median(changeTimes) * 1000, changeTimes.min()! * 1000, changeTimes.max()! * 1000, changeTimes.count,
                 messagesPerChange))
    print(String(format: "  of which the netlink round trip: median %.2f ms [%.2f-%.2f]",
                 median(sendTimes) * 1000, sendTimes.min()! * 1000, sendTimes.max()! * 1000))
    print(String(format: "  (comparing the whole %d-service table instead: median %.2f ms)", serviceCount, median(wholeTimes) * 1000))
} catch {
    print("lb-bench-ipvs: \(error)")
    exit(1)
}
