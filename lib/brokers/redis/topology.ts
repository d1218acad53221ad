// What differs between one Redis and a Redis Cluster, and nothing else: channel names and the commands on
// them, where presence entries and their per-process index live, and how rooms and a dead process's
// entries are found. On a cluster everything of a room stays in its slot (sharded pub/sub), a user's
// messages travel on the user's own shard channel, and SCAN replaces the global sets a join would have
// to write in another slot.
import type { Cluster, Redis } from 'ioredis'
import { globEscape, type RedisKeys } from './keys.js'
import { memberField, parseMemberField } from './messages.js'

export type RedisClient = Redis | Cluster

/** One presence entry of a dead process, to be left by a survivor. */
export interface DeadEntry {
  room: string
  connectionId: string
  userId: string
}

export interface Topology {
  /** A user's messages go to the processes she is on (her own channel, subscribed while she has a socket here). */
  readonly routesUsers: boolean
  /** The command the publish script fans a room event out with. */
  readonly publishCommand: 'PUBLISH' | 'SPUBLISH'
  roomChannel(room: string): string
  /** Which rooms one script call may span: all of them on one Redis, one room (its keys' slot) on a cluster. */
  scriptGroup(room: string): string
  subscribeRoom(subscriber: RedisClient, room: string): Promise<unknown>
  unsubscribeRoom(subscriber: RedisClient, room: string): Promise<unknown>
  publishToUser(command: RedisClient, userId: string, text: string): Promise<unknown>
  subscribeUser(subscriber: RedisClient, userId: string): Promise<unknown>
  unsubscribeUser(subscriber: RedisClient, userId: string): Promise<unknown>
  /** Whose a message on `channel` is: a user's, or a room's events; throws for a channel of no one's. */
  channelOf(channel: string): { room: string } | 'user'
  /** The keys and arguments of the presence scripts. */
  presenceKeys(room: string, processId: string): string[]
  joinArgs(room: string, connectionId: string, userId: string, info: string): string[]
  leaveArgs(room: string, connectionId: string): string[]
  rooms(command: RedisClient): Promise<string[]>
  /** This process's presence index, deleted at close (besides its heartbeat key). */
  processIndexKeys(processId: string): string[]
  /** A dead process's presence entries; `malformed` hears of entries that are not ours. */
  deadEntries(command: RedisClient, processId: string, malformed: (entry: string) => void): Promise<DeadEntry[]>
}

export function singleTopology (keys: RedisKeys): Topology {
  const usersChannel = keys.global('users')
  const roomPrefix = keys.global('ev:')
  return {
    routesUsers: false,
    publishCommand: 'PUBLISH',
    roomChannel: (room) => roomPrefix + room,
    scriptGroup: () => '',
    subscribeRoom: (subscriber, room) => subscriber.subscribe(roomPrefix + room),
    unsubscribeRoom: (subscriber, room) => subscriber.unsubscribe(roomPrefix + room),
    publishToUser: (command, _userId, text) => command.publish(usersChannel, text),
    subscribeUser: async () => {},
    unsubscribeUser: async () => {},
    channelOf (channel) {
      if (channel === usersChannel) return 'user'
      if (!channel.startsWith(roomPrefix)) throw new Error('message on an unknown channel')
      return { room: channel.slice(roomPrefix.length) }
    },
    presenceKeys: (room, processId) => [keys.room(room, 'presence'), keys.room(room, 'users'), keys.global('rooms'), keys.global(`member:${processId}`), keys.room(room, 'info')],
    joinArgs: (room, connectionId, userId, info) => [connectionId, userId, room, memberField(room, connectionId), info],
    leaveArgs: (room, connectionId) => [connectionId, room, memberField(room, connectionId)],
    rooms: (command) => command.smembers(keys.global('rooms')),
    processIndexKeys: (processId) => [keys.global(`member:${processId}`)],
    async deadEntries (command, processId, malformed) {
      const entries: DeadEntry[] = []
      for (const [entry, userId] of Object.entries(await command.hgetall(keys.global(`member:${processId}`)))) {
        const member = parseMemberField(entry)
        if (member === undefined) malformed(entry)
        else entries.push({ room: member[0], connectionId: member[1], userId })
      }
      return entries
    },
  }
}

export function clusterTopology (keys: RedisKeys): Topology {
  const usersChannel = keys.global('users')
  const roomChannel = (room: string) => `${keys.prefix}{${room}}:ev`
  /** Every key matching `pattern` on every master of the cluster (SCAN, a thousand at a time). */
  async function scanMasters (command: RedisClient, pattern: string): Promise<string[]> {
    const found = new Set<string>()
    for (const node of (command as Cluster).nodes('master')) {
      let cursor = '0'
      do {
        const [next, page] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
        for (const key of page) found.add(key)
        cursor = next
      } while (cursor !== '0')
    }
    return [...found]
  }
  return {
    routesUsers: true,
    publishCommand: 'SPUBLISH',
    roomChannel,
    scriptGroup: (room) => room,
    subscribeRoom: (subscriber, room) => subscriber.ssubscribe(roomChannel(room)),
    unsubscribeRoom: (subscriber, room) => subscriber.sunsubscribe(roomChannel(room)),
    publishToUser: (command, userId, text) => command.spublish(keys.userChannel(userId), text),
    // Both go through the one shard subscriber of the user's slot, so a quick reconnect's subscribe runs
    // after the unsubscribe of the socket before it.
    subscribeUser: (subscriber, userId) => subscriber.ssubscribe(keys.userChannel(userId)),
    unsubscribeUser: (subscriber, userId) => subscriber.sunsubscribe(keys.userChannel(userId)),
    channelOf (channel) {
      // Joins and leaves aimed at one connection still travel on the classic channel: only the process
      // holding the connection knows it.
      if (channel === usersChannel) return 'user'
      if (channel.endsWith('}:u') && channel.startsWith(`${keys.prefix}{user:`)) return 'user'
      if (!channel.startsWith(`${keys.prefix}{`) || !channel.endsWith('}:ev')) throw new Error('message on an unknown channel')
      return { room: channel.slice(keys.prefix.length + 1, -'}:ev'.length) }
    },
    presenceKeys (room, processId) {
      const presence = keys.room(room, 'presence')
      return [presence, keys.room(room, 'users'), presence, keys.processEntries(room, processId), keys.room(room, 'info')]
    },
    joinArgs: (_room, connectionId, userId, info) => [connectionId, userId, '', connectionId, info],
    leaveArgs: (_room, connectionId) => [connectionId, '', connectionId],
    // No global set on a cluster (every join would write it in another slot): a room's users hash exists
    // while it has members. An operator's call, so a SCAN of every master is affordable.
    async rooms (command) {
      const suffix = '}:users'
      return (await scanMasters(command, `${globEscape(keys.prefix)}{*${suffix}`)).map((key) => key.slice(keys.prefix.length + 1, -suffix.length))
    },
    processIndexKeys: () => [],
    // One hash per room the dead process had members in, found by SCAN.
    async deadEntries (command, processId) {
      const suffix = `}:proc:${processId}`
      const entries: DeadEntry[] = []
      for (const key of await scanMasters(command, `${globEscape(keys.prefix)}{*${globEscape(suffix)}`)) {
        const room = key.slice(keys.prefix.length + 1, -suffix.length)
        for (const [connectionId, userId] of Object.entries(await command.hgetall(key))) entries.push({ room, connectionId, userId })
      }
      return entries
    },
  }
}
