import Foundation
#if canImport(Glibc)
import Glibc
#endif
import LBConfig
import Testing

/// Validation must stay linear (or n log n) in the number of services: a site with thousands of VIPs is checked
/// by every `lbctl config check`, reload and start.
@Suite("Validation at scale")
struct ScaleTests {
    /// 10,000 services of every kind: distinct VIPs and ports, shared real servers, l4-snat next to Layer 7, DR.
    static func generated(_ count: Int) -> String {
        var yaml = "virtual_services:\n"
        yaml.reserveCapacity(count * 260)
        let modes = ["l7-http", "l7-tcp", "l4-nat", "l4-snat", "l4-dr"]
        for index in 0..<count {
            let mode = modes[index % modes.count]
            let vip = "10.\(index / 65536 % 256).\(index / 256 % 256).\(index % 256)"
            let server = "172.16.\(index / 256 % 256).\(index % 256)"
            yaml += """
              - name: svc-\(index)
                vip: \(vip)
                ports: [\(1000 + index % 50000), "\(60000 + index % 10)-\(60000 + index % 10 + 5)"]
                mode: \(mode)
                health_check: {type: connect}
                real_servers:
                  - {name: a, address: \(server)}
                  - {name: b, address: 172.17.0.\(index % 200 + 1)}

            """
        }
        return yaml
    }

    /// CPU time of this thread (the check runs on it alone), so other work on the machine does not count.
    static func threadCPUSeconds(_ work: () -> Void) -> Double {
        func now() -> Double {
            var time = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
            return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
        }
        let started = now()
        work()
        return now() - started
    }

    @Test func tenThousandServicesAreCheckedInUnderTwoSeconds() throws {
        let small = Self.generated(2_500), large = Self.generated(10_000)
        var report: ConfigurationReport?
        let smallSeconds = Self.threadCPUSeconds { _ = ConfigurationLoader.check(yaml: small, file: "small.yaml") }
        let largeSeconds = Self.threadCPUSeconds { report = ConfigurationLoader.check(yaml: large, file: "big.yaml") }
        #expect(report?.isValid == true, "\(report?.diagnostics.prefix(3) ?? [])")
        #expect(report?.configuration?.virtualServices.count == 10_000)
        // Four times the services: four times the work when linear, sixteen when quadratic.
        #expect(largeSeconds / smallSeconds < 6, "2,500 services \(smallSeconds) s, 10,000 services \(largeSeconds) s")
        #if !DEBUG
        #expect(largeSeconds < 2, "10,000 services took \(largeSeconds) s")
        #endif
        print("config check: 2,500 services \(smallSeconds) s, 10,000 services \(largeSeconds) s of CPU")
    }

    /// The fast path still finds a clash between the first and the last service.
    @Test func clashBetweenDistantServicesIsStillFound() {
        var yaml = Self.generated(2_000)
        yaml += """
          - name: late
            vip: 10.0.0.0
            ports: [1000]
            mode: l7-tcp
            health_check: {type: connect}
            real_servers: [{name: a, address: 172.18.0.1}]

        """
        let report = ConfigurationLoader.check(yaml: yaml, file: "big.yaml")
        #expect(report.diagnostics.contains { $0.message == "10.0.0.0:1000/tcp is already served by virtual service \"svc-0\" (line 2)" },
                "\(report.diagnostics.prefix(3))")
    }
}
