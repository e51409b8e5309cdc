import Foundation
import LBConfig
import Testing
@testable import LBNetfilter

/// Native nftables rules read into the clash scan. The listings are what nft 1.0.6 printed (`nft -j list ruleset`,
/// `nft -a list ruleset`) for a ruleset loaded into a scratch network namespace, next to one iptables-nft rule.
@Suite("nftables rules in the clash scan (pure)")
struct NftablesListingTests {
    let json = #"""
        {"nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "fw", "handle": 1}},
        {"set": {"family": "inet", "name": "blocked", "table": "fw", "type": "ipv4_addr", "handle": 4, "elem": ["10.0.0.10"]}},
        {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "fw", "name": "sub", "handle": 2}},
        {"chain": {"family": "inet", "table": "fw", "name": "orphan", "handle": 3}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.41"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 2762]}}}, {"drop": null}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@blocked"}}, {"reject": {"type": "icmp", "expr": "port-unreachable"}}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [100, 120]}}}, {"jump": {"target": "sub"}}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 10, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 19522}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "sub", "handle": 11, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.40"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 104}}, {"reject": {"type": "icmp", "expr": "port-unreachable"}}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "orphan", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.41"}}, {"drop": null}]}},
        {"table": {"family": "ip", "name": "natx", "handle": 2}},
        {"chain": {"family": "ip", "table": "natx", "name": "pre", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "natx", "chain": "pre", "handle": 2, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.41"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 104}}, {"dnat": {"addr": "10.0.1.99", "port": 104}}]}},
        {"rule": {"family": "ip", "table": "natx", "chain": "pre", "handle": 3, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 19522}}]}},
        {"table": {"family": "ip6", "name": "v6", "handle": 3}},
        {"chain": {"family": "ip6", "table": "v6", "name": "in", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip6", "table": "v6", "chain": "in", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"drop": null}]}},
        {"table": {"family": "ip", "name": "nat", "handle": 4}},
        {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "DNAT"}}]}}
        ]}
        """#

    let text = #"""
        table inet fw { # handle 1
        	set blocked { # handle 4
        		type ipv4_addr
        		elements = { 10.0.0.10 }
        	}

        	chain input { # handle 1
        		type filter hook input priority filter; policy accept;
        		tcp dport 22 accept # handle 5
        		ip daddr 10.0.0.41 tcp dport { 80, 2762 } drop # handle 7
        		ip daddr @blocked reject with icmp port-unreachable # handle 8
        		tcp dport 100-120 jump sub # handle 9
        		meta mark 0x00004c42 accept # handle 10
        	}

        	chain sub { # handle 2
        		ip daddr 10.0.0.40 tcp dport 104 reject with icmp port-unreachable # handle 11
        	}

        	chain orphan { # handle 3
        		ip daddr 10.0.0.41 drop # handle 12
        	}
        }
        table ip natx { # handle 2
        	chain pre { # handle 1
        		type nat hook prerouting priority dstnat; policy accept;
        		ip daddr != 10.0.0.41 tcp dport 104 dnat to 10.0.1.99:104 # handle 2
        		meta mark set 0x00004c42 # handle 3
        	}
        }
        table ip6 v6 { # handle 3
        	chain in { # handle 1
        		type filter hook input priority filter; policy accept;
        		tcp dport 443 drop # handle 2
        	}
        }
        table ip nat { # handle 4
        	chain PREROUTING { # handle 1
        		type nat hook prerouting priority dstnat; policy accept;
        		ip daddr 10.0.0.10 tcp dport 443 counter packets 0 bytes 0 dnat to 10.0.2.99 # handle 2
        	}
        }
        """#

    func rules(iptablesUsesNftables: Bool = true) throws -> [HostRule] {
        try NftablesListing.parse(json: Data(json.utf8), text: text, iptablesUsesNftables: iptablesUsesNftables)
    }

    @Test func rulesAreReadInIptablesTerms() throws {
        let rules = try rules()
        let dnat = try #require(rules.first { $0.target == "DNAT" })
        #expect(dnat.table == "nat" && dnat.chain == "PREROUTING")
        #expect(dnat.text == "ip daddr != 10.0.0.41 tcp dport 104 dnat to 10.0.1.99:104")
        #expect(dnat.origin == "nftables table ip natx, chain pre")
        #expect(dnat.families == [.ipv4])
        #expect(dnat.destination?.negated == true && dnat.destinationPorts?.value == [104...104])
        // A rule in a chain reached by a jump takes the hook of the chain that jumps.
        let jumped = try #require(rules.first { $0.origin == "nftables table inet fw, chain sub" })
        #expect(jumped.table == "filter" && jumped.chain == "INPUT" && jumped.target == "REJECT")
        #expect(jumped.families == [.ipv4, .ipv6])
        // A chain no base chain reaches is inert.
        #expect(!rules.contains { $0.origin?.hasSuffix("chain orphan") == true })
        // The named set's element becomes the rule's destination.
        #expect(rules.contains { $0.text.hasPrefix("ip daddr @blocked") && $0.destination?.value.description == "10.0.0.10/32" })
        // Marks set and matched.
        #expect(rules.filter { $0.marks == [0x4c42] }.count == 2)
        // iptables-nft's own table is left to iptables-save unless iptables is the legacy variant.
        #expect(!rules.contains { $0.origin == "nftables table ip nat, chain PREROUTING" })
        #expect(try self.rules(iptablesUsesNftables: false).contains { $0.origin == "nftables table ip nat, chain PREROUTING" })
    }

    @Test func clashesAreReportedWithTheNftablesRule() throws {
        let found = NetfilterPlanner.conflicts(for: try services(threeServices), in: try rules())
        let lines = found.map { "\($0.service) \($0.rule.text)" }.sorted()
        #expect(lines == [
            "DICOM-NAT ip daddr != 10.0.0.41 tcp dport 104 dnat to 10.0.1.99:104",
            "DICOM-NAT ip daddr 10.0.0.40 tcp dport 104 reject with icmp port-unreachable",
            "Viewer-SNAT ip daddr 10.0.0.41 tcp dport { 80, 2762 } drop",
            "Web ip daddr @blocked reject with icmp port-unreachable",
        ], "the ip6 table's drop of port 443 cannot see the IPv4 VIP; the orphan chain is inert")
        let message = try #require(found.first { $0.service == "DICOM-NAT" && $0.rule.target == "DNAT" }).description
        #expect(message.contains("(nftables table ip natx, chain pre) would redirect the VIP's traffic before lb sees it"))
    }

    @Test func marksClashOnlyWithTransparentServices() throws {
        #expect(NetfilterPlanner.markConflicts(for: try services(threeServices), in: try rules()).isEmpty)
        let transparent = try services(transparentService)
        let found = NetfilterPlanner.markConflicts(for: transparent, in: try rules())
        #expect(found.map(\.rule.text).sorted() == ["meta mark 0x00004c42 accept", "meta mark set 0x00004c42"])
        // The same from iptables: a MARK target and a mark match with lb's value; another mark is fine.
        let iptables = IptablesListing.parse("""
            *mangle
            -A PREROUTING -p tcp -j MARK --set-xmark 0x4c42/0xffffffff
            -A OUTPUT -m mark --mark 19522 -j ACCEPT
            -A OUTPUT -m mark --mark 0x1 -j ACCEPT
            """)
        #expect(NetfilterPlanner.markConflicts(for: transparent, in: iptables).map(\.rule.line) == [2, 3])
    }

    /// A second ruleset (nft 1.0.6, same way): a named interval set with a commented range element, a ban limited
    /// to one source, an ordering on ports, a verdict map jumping to a chain, and lb's mark used in an ip6 table.
    let edgeJSON = #"""
        {"nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "edge", "handle": 1}},
        {"set": {"family": "inet", "name": "bans", "table": "edge", "type": "ipv4_addr", "handle": 3, "flags": ["interval"], "elem": [{"elem": {"val": {"range": ["10.0.0.1", "10.0.0.50"]}, "comment": "lab"}}, "192.0.2.1"]}},
        {"chain": {"family": "inet", "table": "edge", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "edge", "name": "dicom", "handle": 2}},
        {"rule": {"family": "inet", "table": "edge", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@bans"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 104}}, {"drop": null}]}},
        {"rule": {"family": "inet", "table": "edge", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 443]}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "198.51.100.7"}}, {"reject": {"type": "icmp", "expr": "port-unreachable"}}]}},
        {"rule": {"family": "inet", "table": "edge", "chain": "input", "handle": 7, "expr": [{"match": {"op": "<", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 1024}}, {"drop": null}]}},
        {"rule": {"family": "inet", "table": "edge", "chain": "input", "handle": 9, "expr": [{"vmap": {"key": {"payload": {"protocol": "tcp", "field": "dport"}}, "data": {"set": [[2762, {"jump": {"target": "dicom"}}]]}}}]}},
        {"rule": {"family": "inet", "table": "edge", "chain": "dicom", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.40"}}, {"drop": null}]}},
        {"table": {"family": "ip6", "name": "marks6", "handle": 2}},
        {"chain": {"family": "ip6", "table": "marks6", "name": "pre", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
        {"rule": {"family": "ip6", "table": "marks6", "chain": "pre", "handle": 2, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 19522}}]}}
        ]}
        """#

    let edgeText = #"""
        table inet edge { # handle 1
        	set bans { # handle 3
        		type ipv4_addr
        		flags interval
        		elements = { 10.0.0.1-10.0.0.50 comment "lab", 192.0.2.1 }
        	}

        	chain input { # handle 1
        		type filter hook input priority filter; policy accept;
        		ip daddr @bans tcp dport 104 drop # handle 4
        		tcp dport { 80, 443 } ip saddr 198.51.100.7 reject with icmp port-unreachable # handle 6
        		tcp dport < 1024 drop # handle 7
        		tcp dport vmap { 2762 : jump dicom } # handle 9
        	}

        	chain dicom { # handle 2
        		ip daddr 10.0.0.40 drop # handle 10
        	}
        }
        table ip6 marks6 { # handle 2
        	chain pre { # handle 1
        		type filter hook prerouting priority mangle; policy accept;
        		meta mark set 0x00004c42 # handle 2
        	}
        }
        """#

    @Test func setsRangesOrderingsSourcesAndVerdictMaps() throws {
        let rules = try NftablesListing.parse(json: Data(edgeJSON.utf8), text: edgeText, iptablesUsesNftables: true)
        let found = NetfilterPlanner.conflicts(for: try services(threeServices), in: rules)
        let lines = Set(found.map { "\($0.service) \($0.rule.text)" })
        #expect(lines == [
            "DICOM-NAT ip daddr @bans tcp dport 104 drop",  // 10.0.0.40 is inside the commented range 10.0.0.1-10.0.0.50
            "DICOM-NAT tcp dport < 1024 drop",
            "Web tcp dport < 1024 drop",
            "DICOM-NAT ip daddr 10.0.0.40 drop",  // in a chain reached only through a verdict map
        ], "the reject of one source (a ban) is not a clash: \(lines)")
        let banned = try #require(rules.first { $0.text.hasPrefix("ip daddr @bans") })
        #expect(banned.destination != nil)
        // 10.0.0.1-10.0.0.50 in aligned blocks, and the plain element.
        #expect(rules.filter { $0.text.hasPrefix("ip daddr @bans") }.map { $0.destination!.value.description } == [
            "10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/30", "10.0.0.8/29", "10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/31",
            "10.0.0.50/32", "192.0.2.1/32"])
        // lb's mark in an ip6 table cannot touch IPv4 transparent traffic.
        let transparent = try services(transparentService)
        #expect(rules.contains { $0.marks == [0x4c42] })
        #expect(NetfilterPlanner.markConflicts(for: transparent, in: rules).isEmpty)
    }

    @Test func iptablesBanOfOneSourceIsNotAClash() throws {
        let listing = IptablesListing.parse("""
            *filter
            -A INPUT -s 198.51.100.7/32 -p tcp -m tcp --dport 443 -j DROP
            -A INPUT -p tcp -m tcp --dport 443 -j DROP
            """)
        #expect(NetfilterPlanner.conflicts(for: try services(threeServices), in: listing).map(\.rule.line) == [3])
    }

    @Test func notAListingIsAnError() {
        #expect(throws: NetfilterError.self) {
            try NftablesListing.parse(json: Data("[]".utf8), iptablesUsesNftables: true)
        }
    }
}
