// The checks of `fastify.rooms`'s arguments: each names the argument and what it must be, thrown as
// FST_ROOMS_INVALID_ARGUMENT (400) before anything is published.
import { Compile } from 'typebox/compile'
import { InvalidArgumentError } from '../config/errors.js'
import { isRoomName, isSafeText, isUserId, MessageType, RESERVED_TYPES, SAFE_TEXT_MESSAGE } from '../protocol/protocol.js'
import type { BroadcastOptions, MembershipTarget, StreamOptions } from '../types.js'

const messageTypeValidator = Compile(MessageType)

export function checkRoom (room: string): string {
  if (!isRoomName(room)) throw new InvalidArgumentError('room', `must be a string of 1 to 128 characters (${SAFE_TEXT_MESSAGE})`)
  return room
}

export function checkOptionalText (options: BroadcastOptions & StreamOptions, name: 'except' | 'traceId' | 'idempotencyKey', maxLength: number): void {
  const value = options[name]
  if (value === undefined) return
  if (typeof value !== 'string' || value.length === 0 || value.length > maxLength || !isSafeText(value)) {
    throw new InvalidArgumentError(name, `must be a string of 1 to ${maxLength} characters (${SAFE_TEXT_MESSAGE})`)
  }
}

export function checkBroadcastOptions (options: BroadcastOptions): void {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options', 'must be an object')
  checkOptionalText(options, 'except', 64)
  checkOptionalText(options, 'traceId', 64)
  checkOptionalText(options, 'idempotencyKey', 128)
  const { transaction } = options
  if (transaction !== undefined && (typeof transaction !== 'object' || transaction === null || typeof transaction.query !== 'function')) {
    throw new InvalidArgumentError('transaction', 'must be a pg client inside BEGIN (a PoolClient or Client)')
  }
}

export function checkEventType (type: string): void {
  if (!messageTypeValidator.Check(type)) throw new InvalidArgumentError('type', 'must be a letter followed by up to 63 of [A-Za-z0-9_.:-]')
  if (RESERVED_TYPES.has(type)) throw new InvalidArgumentError('type', `"${type}" is reserved by the protocol`)
}

export function checkTarget (target: unknown): MembershipTarget {
  if (typeof target === 'object' && target !== null) {
    const { userId, connectionId } = target as Record<string, unknown>
    if (userId !== undefined && connectionId === undefined) return { userId: checkUserId(userId as string) }
    if (connectionId !== undefined && userId === undefined && typeof connectionId === 'string' && connectionId.length <= 64 && isSafeText(connectionId) && connectionId.length > 0) return { connectionId }
  }
  throw new InvalidArgumentError('target', 'must be { userId } or { connectionId }')
}

export function checkUserId (userId: string): string {
  if (!isUserId(userId)) throw new InvalidArgumentError('userId', `must be a string of 1 to 256 characters (${SAFE_TEXT_MESSAGE})`)
  return userId
}
