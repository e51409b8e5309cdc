import LBTestSupport
import Testing
@testable import LBProxy

@Suite("real-server byte counts: what crossed the socket")
struct ByteCountTests {
    /// A plain real-server connection is counted by lb's backend handler itself (no counting handler below it):
    /// every byte lb wrote, heads and bodies, and every byte the server sent, whichever reader took the response.
    @Test func aPlainConnectionIsCountedByteForByte() async throws {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        let fixture = try await RawFixture { _, index in
            switch index {
            case 0, 1: .send(ok("hello"))                  // lb's reader of simple responses
            case 2: .send(chunked)                         // NIO's parser from here on
            case 3: .send(ok("again"))
            default: .sendAndClose(ok("bye", extra: "Connection: close\r\n"))  // the close hands the counts over
            }
        }
        let client = try RawClient(port: fixture.vipPort)
        // A body that arrives while lb connects (held, then written on the new connection).
        client.send("POST /0 HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello world")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("GET /1 HTTP/1.1\r\nHost: test\r\nX-Padding: \(String(repeating: "p", count: 300))\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("GET /2 HTTP/1.1\r\nHost: test\r\n\r\n")
        #expect(statusLine(client.read(until: "0\r\n\r\n")) == "HTTP/1.1 200 OK")
        // A body after its head, on the kept-alive connection (written as it comes).
        client.send("PUT /3 HTTP/1.1\r\nHost: test\r\nContent-Length: 2000\r\n\r\n")
        client.send(String(repeating: "b", count: 2000))
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")
        client.send("GET /4 HTTP/1.1\r\nHost: test\r\n\r\n")
        #expect(statusLine(client.readResponse()) == "HTTP/1.1 200 OK")

        let pool = try #require(fixture.engine.pool(for: "web"))
        let backend = fixture.backend
        let counted = await eventually {
            guard let status = pool.status.first else { return false }
            return status.bytesToServer == UInt64(backend.bytesReceived) && status.bytesFromServer == UInt64(backend.bytesSent)
        }
        let status = pool.status.first
        #expect(counted, "pool: \(status?.bytesToServer ?? 0) to, \(status?.bytesFromServer ?? 0) from; server: \(backend.bytesReceived) read, \(backend.bytesSent) sent")
        #expect(backend.requests.count == 5 && backend.connections == 1, "one kept-alive server connection carried all five")
        #expect(backend.bytesReceived > 2011 + 300 && backend.bytesSent > 5 * 38, "the bodies and the padding reached the server")
        await fixture.stop()
    }

    /// Under l7-tcp a ByteCounter at the socket counts: what the client sent, and what the server answered.
    @Test func anL7TCPConnectionIsCountedAtTheSocket() async throws {
        let fixture = try await TCPFixture()
        let client = try RawClient(port: fixture.vipPort)
        client.send("ASSOCIATE\nDATA\n")
        client.shutdownWrite()
        let reply = client.readAllText()
        #expect(reply.hasSuffix("ASSOCIATE\nDATA\nbye\n"), "\(reply)")
        let pool = try #require(fixture.engine.pool(for: "dicom"))
        let counted = await eventually {
            let status = pool.status
            return status.reduce(0) { $0 + $1.bytesToServer } == 15
                && status.reduce(0) { $0 + $1.bytesFromServer } == UInt64(reply.utf8.count)
        }
        #expect(counted, "\(pool.status.map { ($0.name, $0.bytesToServer, $0.bytesFromServer) }), reply \(reply.utf8.count) bytes")
        await fixture.stop()
    }
}
