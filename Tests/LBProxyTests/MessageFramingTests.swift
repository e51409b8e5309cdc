@testable import LBProxy
import NIOHTTP1
import Testing

/// The allocation-free fast paths of framing and hop-by-hop removal must agree with the general rules they skip.
@Suite("Message framing fast paths")
struct MessageFramingTests {
    @Test func hopByHopNamesAreRecognisedInAnyCaseAndNothingElseIs() {
        #expect(Set(hopByHopNames) == hopByHopHeaders && hopByHopNames.count == hopByHopHeaders.count)
        for (index, name) in hopByHopNames.enumerated() { #expect(hopByHopIndex(name.uppercased()) == index) }
        var tokens: [String] = []
        forEachListToken(" a ,,\tKeep-Alive\t, b c ,") { tokens.append(String($0)) }
        #expect(tokens == ["a", "Keep-Alive", "b c"])
        for name in hopByHopHeaders {
            #expect(isHopByHopName(name))
            #expect(isHopByHopName(name.uppercased()))
            #expect(isHopByHopName(String(name.enumerated().map { $0.offset % 2 == 0 ? Character($0.element.uppercased()) : $0.element })))
        }
        for name in ["host", "content-length", "tE ", "connections", "keep_alive", "trailers", "upgrade-insecure-requests",
                     "proxy-authorizatioN2", "x-te", "", "Ｔe"] {
            #expect(!isHopByHopName(name), "\(name)")
        }
    }

    @Test func removalTakesHopByHopFieldsAndWhatConnectionNamesButNotProtectedOnes() {
        var headers = HTTPHeaders([
            ("Host", "a"), ("Connection", "keep-alive, X-Private, Host, content-length"), ("Keep-Alive", "timeout=5"),
            ("x-private", "2"), ("connection", "close"),
            ("X-Private", "1"), ("TE", "trailers"), ("Content-Length", "3"), ("Proxy-Authorization", "x"), ("Accept", "*/*"),
        ])
        headers.removeHopByHop()
        #expect(headers.map(\.name) == ["Host", "Content-Length", "Accept"])
        var closing = HTTPHeaders([("Host", "a"), ("Connection", "close"), ("Close", "x"), ("Accept", "*/*")])
        closing.removeHopByHop()
        #expect(closing.map(\.name) == ["Host", "Accept"])
        var plain = HTTPHeaders([("Host", "a"), ("Accept", "*/*")])
        plain.removeHopByHop()
        #expect(plain.map(\.name) == ["Host", "Accept"])
    }

    @Test func framingFastPathsAgreeWithTheGeneralRule() throws {
        #expect(try HTTPHeaders([("Host", "a")]).bodyFraming() == .unframed)
        #expect(try HTTPHeaders([("content-LENGTH", "42")]).bodyFraming() == .contentLength(42))
        #expect(try HTTPHeaders([("Content-Length", "7"), ("Content-Length", "7")]).bodyFraming() == .contentLength(7))
        #expect(try HTTPHeaders([("Content-Length", "7, 7")]).bodyFraming() == .contentLength(7))
        #expect(try HTTPHeaders([("Content-Length", " 7 ")]).bodyFraming() == .contentLength(7))
        #expect(try HTTPHeaders([("Transfer-Encoding", "Chunked")]).bodyFraming() == .chunked)
        for bad in ["", "+1", "-1", "1 2", "0x10", "1234567890123456789", "7, 8"] {
            #expect(throws: MessageRefusal.self, "\(bad)") { try HTTPHeaders([("Content-Length", bad)]).bodyFraming() }
        }
        #expect(throws: MessageRefusal.lengthAndTransferEncoding) {
            try HTTPHeaders([("Content-Length", "1"), ("Transfer-Encoding", "chunked")]).bodyFraming()
        }
        #expect(throws: MessageRefusal.self) { try HTTPHeaders([("Content-Length", "1"), ("Content-Length", "2")]).bodyFraming() }
        #expect(throws: MessageRefusal.unsupportedTransferEncoding("")) { try HTTPHeaders([("Transfer-Encoding", "")]).bodyFraming() }
        #expect(throws: MessageRefusal.unsupportedTransferEncoding(" , ")) { try HTTPHeaders([("Transfer-Encoding", " , ")]).bodyFraming() }
        #expect(throws: MessageRefusal.invalidContentLength("")) { try HTTPHeaders([("Content-Length", "")]).bodyFraming() }
    }
}
