import Foundation
import HTTPPathWorkload
import LBProxy
import NIOCore

// `http-path-loop COUNT [plain|viewer|https|new]`: COUNT exchanges of the benchmark's request through lb's l7-http
// path, nothing else, for profilers. "viewer" adds cookie persistence (a returning browser, as in the benchmark) and
// X-Forwarded-For; "https" is the viewer over TLS, a browser's OpenSSL at the other end; "new" is one request per
// new client connection (Connection: close). lb's part alone: callgrind --toggle-collect='*lbHandles*' (with "new",
// also '*lbSetsUp*' and '*lbCloses*'). Prints the last exchange.
let arguments = CommandLine.arguments
let count = arguments.count > 1 ? Int(arguments[1]) ?? 100_000 : 100_000
let mode = arguments.count > 2 ? arguments[2] : "plain"
if mode == "new" {
    let exchange = try HTTPPathWorkload.newConnectionsExchange()
    for _ in 0..<max(count - 1, 0) { try exchange.newConnectionExchange() }
    exchange.keepsLastMessages = true
    try exchange.newConnectionExchange()
    print(String(buffer: exchange.lastResponseAtClient))
    exchange.finish()
    exit(0)
}
guard let options = HTTPPathWorkload.Options.named(mode) else {
    fatalError("usage: http-path-loop COUNT [plain|viewer|https|new]")
}
let exchange = try HTTPPathWorkload.returningBrowserExchange(options)
for _ in 0..<max(count - 1, 0) { try exchange.exchange() }
exchange.keepsLastMessages = true  // the last one is printed
try exchange.exchange()
print(String(buffer: exchange.lastRequestAtServer))
print(String(buffer: exchange.lastResponseAtClient))
exchange.finish()
