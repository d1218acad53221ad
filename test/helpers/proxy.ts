// A TCP proxy on 127.0.0.1 that a test controls: it can cut every connection (a network drop) or stall
// them (a dead peer that neither answers nor closes), to exercise reconnects through real sockets.
import net from 'node:net'

export interface TcpProxy {
  port: number
  /** Where new connections go; may change, e.g. after a server restart on another port. */
  target: number
  /** Destroys every open connection (stalled ones too), as a network drop would. */
  cut(): void
  /** Stops forwarding on every open connection without closing it; new connections still work. */
  stall(): void
  /** While true, new connections are closed at once (the server is unreachable); open ones are untouched. */
  refuse(refusing: boolean): void
  close(): Promise<void>
}

export interface ProxyOptions {
  /**
   * What the server sends, on its way to the client: given the client's write, a handler for each chunk
   * (by default every chunk passes as it is). Each connection gets its own handler.
   */
  fromServer?: (write: (chunk: Buffer) => void) => (chunk: Buffer) => void
}

export async function startProxy (target: number, options: ProxyOptions = {}): Promise<TcpProxy> {
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket }>()
  const stalled = new Set<net.Socket>()
  let refusing = false
  const server = net.createServer((client) => {
    if (refusing) {
      client.on('error', () => {})
      client.destroy()
      return
    }
    const upstream = net.connect(proxy.target, '127.0.0.1')
    const pair = { client, upstream }
    pairs.add(pair)
    client.pipe(upstream)
    if (options.fromServer === undefined) upstream.pipe(client)
    else upstream.on('data', options.fromServer((chunk) => client.write(chunk)))
    const drop = () => {
      pairs.delete(pair)
      client.destroy()
      upstream.destroy()
    }
    client.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address() as net.AddressInfo
  const proxy: TcpProxy = {
    port: address.port,
    target,
    cut () {
      for (const { client, upstream } of pairs) {
        client.destroy()
        upstream.destroy()
      }
      pairs.clear()
      for (const socket of stalled) socket.destroy()
      stalled.clear()
    },
    stall () {
      for (const { client, upstream } of pairs) {
        client.unpipe(upstream)
        upstream.unpipe(client)
        client.pause()
        upstream.pause()
        stalled.add(client).add(upstream)
      }
      pairs.clear()
    },
    refuse (value) {
      refusing = value
    },
    async close () {
      proxy.cut()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
  return proxy
}
