// Counters behind `fastify.rooms.stats()`. Plain objects incremented in place: cheap enough for every frame.
// Keys come from the server (known types, codes, reasons), never from raw client input, so they stay bounded.

export type HandshakeResult = 'ok' | 'unauthorized' | 'forbidden_origin' | 'rate_limited' | 'unavailable'

function bump(counter: Record<string, number>, key: string | number, by = 1): void {
  counter[key] = (counter[key] ?? 0) + by
}

export class Stats {
  readonly messagesIn: Record<string, number> = Object.create(null)
  readonly messagesOut: Record<string, number> = Object.create(null)
  readonly errors: Record<string, number> = Object.create(null)
  readonly closes: Record<string, number> = Object.create(null)
  readonly handshakes: Record<string, number> = Object.create(null)
  readonly resumes: Record<string, number> = Object.create(null)
  slowConsumerCloses = 0

  messageIn(type: string): void {
    bump(this.messagesIn, type)
  }

  /** One call per publish (or direct frame) with the number of sockets it went to. */
  messageOut(type: string, recipients = 1): void {
    if (recipients > 0) bump(this.messagesOut, type, recipients)
  }

  error(code: string): void {
    bump(this.errors, code)
  }

  close(code: number): void {
    bump(this.closes, code)
  }

  handshake(result: HandshakeResult): void {
    bump(this.handshakes, result)
  }

  resume(result: 'replayed' | 'reset'): void {
    bump(this.resumes, result)
  }
}
