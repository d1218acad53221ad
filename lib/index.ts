// Plugin entry: option checking, the `fastify.rooms` decorator, the /ws route and its hooks, shutdown.
// It wires the stages together (the one place that knows them all) and lists the package's public exports.
// Past 300 lines: the route's hooks are the stages' meeting point; split, each piece would need all the others.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import fastifyJwt from '@fastify/jwt'
import rateLimit from '@fastify/rate-limit'
import websocket from '@fastify/websocket'
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { parse as parseDuration } from '@lukeed/ms'
import type { TSchema } from 'typebox'
import type { WebSocket } from 'ws'
import { memoryBroker } from './brokers/memory.js'
import { loadClientBundle, registerClientRoutes } from './http/client-bundle.js'
import { Dispatcher } from './dispatch/dispatch.js'
import { BrokerError, InvalidArgumentError, InvalidOptionError } from './config/errors.js'
import { Outbox } from './brokers/outbox.js'
import { InjectTickets, Injector } from './admission/inject.js'
import { INJECT_HEADER } from './admission/inject-header.js'
import { Stats } from './observability/metrics.js'
import { loadTracing } from './observability/tracing.js'
import { asyncApiDocument, contractSource } from './protocol/asyncapi.js'
import { defaults, resolveOptions, type JwtOptions, type RoomsOptions } from './config/options.js'
import { Membership } from './rooms/membership.js'
import { Resumer } from './rooms/resume.js'
import { ConnectionLifecycle } from './rooms/lifecycle.js'
import { FrameIntake } from './socket/intake.js'
import { WriteCoalescer } from './out/write-coalescer.js'
import { TokenExpiries } from './socket/token-expiry.js'
import { Presence } from './rooms/presence.js'
import { RoomRegistry } from './rooms/registry.js'
import { StreamRelay } from './rooms/stream-relay.js'
import { StreamWriter } from './rooms/streams.js'
import { SseTransport } from './sse/transport.js'
import type { MessageDefinition, RoomsDecorator } from './types.js'
import { LoadShedding } from './admission/load-shedding.js'
import { createUpgradeGate, handleProtocols } from './admission/upgrade.js'
import { createTokenVerifier, refuseTokens, type Admission, type JwtVerifier } from './admission/token.js'
import { redactedRequest } from './admission/log-redaction.js'
import { keepUpgradeResponse, releaseUpgradeResponse } from './admission/upgrade-release.js'

declare module 'fastify' {
  interface FastifyInstance {
    rooms: RoomsDecorator
  }
  interface FastifyRequest {
    /** Set by the /ws route's preValidation hook once Origin and token are accepted. */
    roomsAdmission: Admission | null
  }
}

async function fastifyRooms (fastify: FastifyInstance, rawOptions: RoomsOptions): Promise<void> {
  const options = resolveOptions(rawOptions)
  if (options.jwt === false && !fastify.hasDecorator('jwt')) {
    throw new InvalidOptionError('jwt', 'is false, but no @fastify/jwt was registered before fastify-rooms')
  }

  // Made in the order they depend on each other; the thunks reach the parts made after them.
  const stats = new Stats(options.metrics, () => registry)
  const tracing = await loadTracing(options.tracing)
  const broker = options.broker ?? memoryBroker()
  const presence = new Presence(options.roomPolicy, options.presenceInfo, broker, fastify.log)
  const streams = {
    writer: new StreamWriter(broker, options, fastify.log),
    relay: new StreamRelay(() => broker, (append, frame) => registry.fanOutAppend(append, frame), { streamIdleMs: options.streamIdleMs, log: fastify.log }),
  }
  const membership = new Membership(options, broker, presence, stats, fastify.log, () => registry.api, streams.relay)
  const outbox = options.outbox === undefined ? undefined : new Outbox(options.outbox, broker, fastify.log)
  const registry = new RoomRegistry(options, membership, presence, broker, stats, () => sse, streams, outbox, tracing)
  await broker.start(registry, {
    history: options.history,
    historyFor: (room) => options.roomPolicy(room).history,
    idempotencyWindowMs: options.retryWindow === false ? defaults.retryWindow.windowMs : options.retryWindow.windowMs,
    log: fastify.log,
  })
  if (outbox !== undefined) {
    try {
      await outbox.start()
    } catch (err) {
      await broker.close()
      throw new BrokerError(`cannot use the outbox's PostgreSQL: ${(err as Error).message}`)
    }
  }
  const contract = contractSource(options, Object.keys(rawOptions.namespaces ?? {}))
  const tickets = new InjectTickets()
  const coalescer = new WriteCoalescer()
  const expiries = new TokenExpiries()
  const shedding = options.loadShedding === false ? undefined : new LoadShedding(options.loadShedding)
  let injector: Injector | undefined
  let sse: SseTransport | undefined
  const decorator: RoomsDecorator = {
    ...registry.api,
    inject: (user, clientOptions) => {
      if (injector === undefined) return Promise.reject(new InvalidArgumentError('inject', 'is available once the server is ready (after register)'))
      return injector.inject(user, clientOptions)
    },
    asyncapi: (info) => asyncApiDocument(contract, info),
  }
  fastify.decorate('rooms', decorator)

  let closing = false
  let heartbeat: NodeJS.Timeout | undefined
  async function shutdown (): Promise<void> {
    closing = true
    clearInterval(heartbeat)
    // Open streams end aborted (`reason: 'shutdown'`) while their members are still here to be told.
    await streams.writer.close(options.closeTimeoutMs)
    await membership.shutdown(options.closeTimeoutMs)
    sse?.close()
  }
  // Fastify answers 503 by itself to requests that arrive while it closes, but on an upgrade socket
  // nothing ends the connection afterwards, and server.close() would wait for it forever. This listener
  // runs after @fastify/websocket's, once routing has written that answer synchronously.
  const endRefusedUpgrade = (_request: IncomingMessage, socket: Duplex & { bytesWritten?: number }) => {
    if (closing && (socket.bytesWritten ?? 0) > 0) {
      socket.end()
      socket.resume()
    }
  }
  fastify.addHook('preClose', async () => {
    closing = true
    injector?.closeAll()
    fastify.server.on('upgrade', endRefusedUpgrade)
  })
  // onClose hooks run after preClose (where the sockets are closed): the broker disconnects last.
  fastify.addHook('onClose', async () => {
    clearInterval(heartbeat)
    expiries.stop()
    shedding?.stop()
    fastify.server.off('upgrade', endRefusedUpgrade)
    presence.stop()
    streams.relay.close()
    await outbox?.close()
    await broker.close({ lingerMs: membership.dropGraces() ? options.leaveGraceMs : 0 })
  })

  // @fastify/websocket belongs to the whole server (it owns the server's 'upgrade' event and answers
  // upgrades to every other route), so it is registered at the host's level, as users do themselves.
  if (fastify.hasDecorator('websocketServer')) {
    // The host registered it already; its maxPayload and handleProtocols apply (see README).
    fastify.addHook('preClose', shutdown)
  } else {
    await fastify.register(websocket, {
      options: {
        maxPayload: options.maxPayload,
        handleProtocols,
        // Negotiated so that each message stands alone (one compressed frame per publish fits every socket);
        // ws itself compresses nothing it sends (the threshold), so no socket gets a deflate context for it.
        perMessageDeflate: options.compression === false
          ? false
          : { serverNoContextTakeover: true, clientNoContextTakeover: true, threshold: Number.MAX_SAFE_INTEGER },
      },
      errorHandler: (error, socket, request) => {
        request.log.warn({ err: error }, 'fastify-rooms: socket error')
        socket.terminate()
      },
      // Replaces the default, which closes sockets with no code (clients would see 1005).
      preClose: async function (this: FastifyInstance) {
        await shutdown()
        await new Promise<void>((resolve) => this.websocketServer.close(() => resolve()))
      },
    })
  }

  await fastify.register(async function roomsRoute (scope) {
    const verifyToken = options.jwt === undefined
      ? refuseTokens
      : createTokenVerifier(await jwtVerifier(scope, options.jwt), options.userFromToken, options.token)
    const dispatcher = new Dispatcher(options, membership, new Resumer(membership, broker, stats, streams.relay), registry, verifyToken, stats, tracing)
    const intake = new FrameIntake({ ...options, messageTypes: options.messages.keys() }, stats)
    const lifecycle = new ConnectionLifecycle(options, membership, intake, dispatcher, stats, fastify.log, coalescer, expiries, () => closing)
    const gate = createUpgradeGate({ ...options, shedding }, verifyToken, {
      takeInjected: (ticket) => tickets.take(ticket),
      isClosing: () => closing,
      openConnections: () => membership.connections.size,
      openConnectionsOf: (userId) => membership.connectionsOf(userId),
    }, stats)

    // An upgrade's admission span, from its first hook to its answer (onSend) or its socket (handler).
    const traceAdmission = async (request: FastifyRequest) => {
      if (request.ws) tracing?.admissionStarted(request, { path: options.path, address: request.ip })
    }
    if (options.handshakeRateLimit !== false && !scope.hasDecorator('rateLimit')) {
      await scope.register(rateLimit, { global: false })
    }
    scope.decorateRequest('roomsAdmission', null)

    // A throw inside a timer callback is uncaught: each socket's tick is guarded on its own.
    heartbeat = setInterval(() => {
      for (const connection of membership.connections) {
        try {
          connection.heartbeat()
        } catch (err) {
          connection.log.warn({ err }, 'fastify-rooms: heartbeat failed, terminating')
          connection.terminate()
        }
      }
      dispatcher.acks?.sweep(Date.now())
    }, options.heartbeatMs)
    heartbeat.unref()

    scope.route({ method: 'OPTIONS', url: options.path, handler: gate.preflight })
    injector = new Injector(fastify, `${scope.prefix}${options.path}`, tickets, (id) => membership.connection(id))
    // One budget per client address for every handshake: upgrades, SSE session opens and stream attaches.
    const handshakeLimits = options.handshakeRateLimit
    const handshakeLimit = handshakeLimits === false
      ? undefined
      : scope.rateLimit({
        // Injected connections (a host's tests) are not network clients.
        allowList: (request: FastifyRequest) => tickets.has(request.headers[INJECT_HEADER]),
        max: handshakeLimits.max,
        timeWindow: handshakeLimits.timeWindow,
        onExceeded: (request) => {
          if (request.ws || (request.method === 'POST' && request.routeOptions.url?.endsWith('/sse') === true)) stats.handshake('rate_limited')
          request.log.info({ reason: 'rate_limited', remoteAddress: request.ip }, 'fastify-rooms: handshake rejected: too many handshakes')
        },
      })
    scope.route({
      method: 'GET',
      url: options.path,
      websocket: true,
      logSerializers: { req: redactedRequest },
      // A host's global rate limit does not apply twice: the handshake limit is ours.
      config: { rateLimit: false },
      // Cheap refusals first, then the rate limit, then the checks it must count (preValidation).
      onRequest: [...(tracing === undefined ? [] : [traceAdmission]), gate.onRequest, ...(handshakeLimit === undefined ? [] : [handshakeLimit])],
      preValidation: [gate.preValidation, keepUpgradeResponse],
      // injectWS reports a refusal by its status alone: the answer is kept for the injected client.
      onSend: async (request, reply, payload) => {
        if (reply.statusCode >= 400 && request.headers[INJECT_HEADER] !== undefined) tickets.noteRefusal(request.headers[INJECT_HEADER], reply.statusCode, payload)
        if (reply.statusCode >= 400) tracing?.admissionEnded(request, { accepted: false, status: reply.statusCode, code: errorCodeOf(payload) })
        return payload
      },
      handler: (socket, request) => {
        releaseUpgradeResponse(request)
        const connection = lifecycle.start(socket, request.roomsAdmission as Admission, request)
        tracing?.admissionEnded(request, connection === undefined ? { accepted: false, status: 101, code: 'closed_at_start' } : { accepted: true, connectionId: connection.id })
      },
    })
    if (options.serveClient) registerClientRoutes(scope, options.path, await loadClientBundle())
    if (options.sse !== false) {
      sse = new SseTransport({
        path: options.path,
        sessionIdleMs: options.sse.sessionIdleMs,
        maxPayload: options.maxPayload,
        maxConnections: options.maxConnections,
        maxConnectionsPerUser: options.maxConnectionsPerUser,
        maxRoomsPerConnection: options.maxRoomsPerConnection,
        rateLimit: options.rateLimit,
        abuseLimit: options.abuseLimit,
        failedAttempts: options.handshakeRateLimit === false ? false : { max: options.handshakeRateLimit.max, windowMs: durationMs(options.handshakeRateLimit.timeWindow) },
      }, {
        admit: gate.admit,
        signedInAgain: options.authenticate !== undefined,
        checkOrigin: gate.checkOrigin,
        cors: gate.cors,
        preflight: gate.preflightFor('GET, POST', 'authorization, content-type, last-event-id'),
        start: (socket, admission, request, rate) => lifecycle.start(socket as unknown as WebSocket, admission, request, rate),
        isClosing: () => closing,
        refused: (reason) => stats.handshake(reason),
        rateLimit: handshakeLimit,
        forward: broker.sendToSession === undefined ? undefined : (userId, sessionId, frame) => broker.sendToSession!(userId, sessionId, frame),
      })
      sse.register(scope)
    }
  })
}

/** The `code` of a refusal's JSON answer, for its span; undefined for any other body. */
function errorCodeOf (payload: unknown): string | undefined {
  if (typeof payload !== 'string') return undefined
  try {
    const code = (JSON.parse(payload) as { code?: unknown }).code
    return typeof code === 'string' ? code : undefined
  } catch {
    return undefined
  }
}

/** A rate-limit window as @fastify/rate-limit reads it: milliseconds, or a duration such as '1 minute'. */
function durationMs (timeWindow: number | string): number {
  return typeof timeWindow === 'number' ? timeWindow : parseDuration(timeWindow) ?? 60_000
}

/** Our own @fastify/jwt, encapsulated in the route's scope, or the host's when `jwt: false`. */
async function jwtVerifier (scope: FastifyInstance, jwt: JwtOptions | false): Promise<JwtVerifier> {
  if (jwt === false) return scope.jwt
  const jwtOptions = { secret: jwt.secret, ...(jwt.verify === undefined ? {} : { verify: jwt.verify }) }
  if (!scope.hasDecorator('jwt')) {
    await scope.register(fastifyJwt, jwtOptions)
    return scope.jwt
  }
  // The host has an @fastify/jwt of its own with other settings: ours goes under a namespace.
  await scope.register(fastifyJwt, { ...jwtOptions, namespace: 'fastifyRooms' })
  return (scope.jwt as unknown as Record<string, JwtVerifier>).fastifyRooms as JwtVerifier
}

/** Declares a host message type so that `payload` in the handler is typed from its TypeBox schema. */
export function defineMessage<S extends TSchema, R> (definition: MessageDefinition<S, R>): MessageDefinition<S, R> {
  return definition
}

/**
 * The plugin's options, kept with their exact message and event types (for `RoomsSchema<typeof options>`).
 * Only for types: it returns its argument.
 */
export function defineRooms<const O extends RoomsOptions> (options: O): O {
  return options
}

const plugin: FastifyPluginAsync<RoomsOptions> = fp(fastifyRooms, { fastify: '5.x', name: 'fastify-rooms' })
export default plugin
export { plugin as fastifyRooms }
export { memoryBroker } from './brokers/memory.js'
export type {
  Broker, BrokerDelivery, BrokerSettings, EventBroker, HistoryEvent, HistorySlice, MembershipChange, PresenceBroker, PresenceSample,
  PublishRequest, RoomPosition, SharedAnswers, SqlTransaction, StoredStream, StreamBroker, StreamPoint, UserRouting,
} from './brokers/broker.js'
export type { StreamAppend, StreamInfo, StreamState } from './protocol/stream-frames.js'
export type { OutboxOptions, OutboxPool } from './brokers/outbox.js'
export { CloseCode, ErrorCode, FrameError, SUBPROTOCOL, PROTOCOL_VERSION } from './protocol/protocol.js'
export { handleProtocols } from './admission/upgrade.js'
export { redactedRequest as requestSerializer } from './admission/log-redaction.js'
export type { RoomsOptions, JwtOptions } from './config/options.js'
export type * from './types.js'
