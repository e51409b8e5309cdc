import LBConfig
import LBProxy
import NIOCore

// `http-path-loop COUNT [viewer]`: COUNT exchanges of the benchmark's request through lb's l7-http path, nothing
// else, for profilers. "viewer" adds cookie persistence and X-Forwarded-For.
let arguments = CommandLine.arguments
let count = arguments.count > 1 ? Int(arguments[1]) ?? 100_000 : 100_000
let viewer = arguments.count > 2 && arguments[2] == "viewer"
let options = viewer ? "    forwarded_for: true\n    persistence: {type: http-cookie, cookie: LBSRV}\n" : ""
let yaml = """
    virtual_services:
      - name: viewer
        vip: 192.0.2.10
        ports: [80]
        mode: l7-http
    \(options)    real_servers: [{name: web1, address: 192.0.2.20}]
    """
guard let service = ConfigurationLoader.check(yaml: yaml, file: "loop.yaml").configuration?.virtualServices.first else {
    fatalError("config rejected")
}
let request = """
    GET /viewer/studies/1.2.840.113619/series?limit=50 HTTP/1.1\r
    Host: viewer.hospital.example\r
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r
    Accept: application/json, text/plain, */*\r
    Accept-Encoding: gzip, deflate, br\r
    Accept-Language: en-GB,en;q=0.9\r
    Connection: keep-alive\r
    Cookie: session=0123456789abcdef\r
    \r

    """
let response = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
let exchange = try InProcessExchange(service: service, request: request, response: response)
for _ in 0..<count { try exchange.exchange() }
print(String(buffer: exchange.lastRequestAtServer))
print(String(buffer: exchange.lastResponseAtClient))
exchange.finish()
