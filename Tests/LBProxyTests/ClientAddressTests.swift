import LBConfig
import NIOCore
import Testing
@testable import LBProxy

/// The client's address is read from the socket address's bytes (once per connection); it must be the address
/// its text names, or X-Forwarded-For and source-IP persistence would see another client.
@Suite("Client addresses read from socket addresses")
struct ClientAddressTests {
    @Test(arguments: ["127.0.0.1", "198.51.100.7", "10.1.2.254", "0.0.0.0", "255.255.255.255",
                      "::1", "2001:db8::7", "fe80::1", "::ffff:198.51.100.7", "::"])
    func socketAddressGivesTheAddressItsTextNames(text: String) throws {
        let socket = try SocketAddress(ipAddress: text, port: 40000)
        let fromText = try #require(IPAddress(text))
        #expect(IPAddress(socket) == fromText)
        #expect(IPAddress(socket)?.description == fromText.description)
    }

    @Test func aUnixSocketHasNoIPAddress() throws {
        #expect(IPAddress(try SocketAddress(unixDomainSocketPath: "/run/lb-test.sock")) == nil)
        #expect(IPAddress(nil as SocketAddress?) == nil)
    }
}
