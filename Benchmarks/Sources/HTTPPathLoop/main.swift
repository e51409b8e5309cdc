import HTTPPathWorkload
import LBProxy
import NIOCore

// `http-path-loop COUNT [viewer]`: COUNT exchanges of the benchmark's request through lb's l7-http path, nothing
// else, for profilers. "viewer" adds cookie persistence (a returning browser, as in the benchmark) and X-Forwarded-For. Prints the last exchange.
let arguments = CommandLine.arguments
let count = arguments.count > 1 ? Int(arguments[1]) ?? 100_000 : 100_000
let options: HTTPPathWorkload.Options = arguments.count > 2 && arguments[2] == "viewer" ? .viewer : .plain
let exchange = try HTTPPathWorkload.returningBrowserExchange(options)
for _ in 0..<max(count - 1, 0) { try exchange.exchange() }
exchange.keepsLastMessages = true  // the last one is printed
try exchange.exchange()
print(String(buffer: exchange.lastRequestAtServer))
print(String(buffer: exchange.lastResponseAtClient))
exchange.finish()
