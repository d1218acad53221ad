// The client's error: a server's error code, a refused connection's, or the client's own.

export class RoomsClientError extends Error {
  constructor (
    /**
     * The server's error code (`forbidden`, `not_in_room`…), a refused connection's (`unauthorized`,
     * `origin_not_allowed`, `rate_limited`, `unavailable`, `connect_timeout`, `network`, `refused`), or the
     * client's own: `timeout`, `queue_timeout`, `closed`, `queue_full`, `token`, `connection`, `listener`.
     */
    readonly code: string,
    message: string,
    readonly details?: unknown,
    /** The room an error is about, when there is one (resume outcomes). */
    readonly room?: string
  ) {
    super(message)
    this.name = 'RoomsClientError'
  }
}

/** Why a connection attempt failed, in `RoomsClientError.details`. */
export interface RefusalDetails {
  /** The HTTP status of the refused upgrade (or of the diagnostic request), when there was one. */
  status?: number
  /** From `Retry-After` on a 429. */
  retryAfterMs?: number
  /** The `code` of the server's JSON answer (`FST_ROOMS_UNAUTHORIZED`, `FST_ROOMS_FORBIDDEN_ORIGIN`…), when it was read. */
  serverCode?: string
}
