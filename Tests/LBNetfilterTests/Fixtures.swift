import LBConfig
import Testing

/// Services from YAML fragments, through the real loader (shared by the planner and nftables tests).
func services(_ yaml: String) throws -> [VirtualService] {
    let report = ConfigurationLoader.check(yaml: "virtual_services:\n" + yaml, file: "t.yaml")
    return try #require(report.configuration?.virtualServices, "\(report.diagnostics)")
}

/// One service of each kind that the clash scan treats differently: l4-snat, l4-nat and Layer 7.
let threeServices = """
      - name: Viewer-SNAT
        vip: 10.0.0.41
        ports: [2762]
        mode: l4-snat
        real_servers:
          - {name: core-1, address: 10.0.1.11, port: 2762}
          - {name: core-2, address: 10.0.1.12, port: 12762}
      - name: DICOM-NAT
        vip: 10.0.0.40
        ports: [104]
        mode: l4-nat
        real_servers: [{name: core-1, address: 10.0.1.11, port: 11112}]
      - name: Web
        vip: 10.0.0.10
        ports: [443]
        mode: l7-tcp
        real_servers: [{name: web-1, address: 10.0.2.21}]
    """

/// A transparent Layer 7 service: lb's firewall mark and routing table are in use.
let transparentService = """
      - name: Viewer-T
        vip: 10.0.0.50
        ports: [80]
        mode: l7-tcp
        transparent: true
        real_servers: [{name: web-1, address: 10.0.2.21, port: 8080}]
    """
