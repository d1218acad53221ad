// The request header that carries an inject() ticket (kept apart: upgrade.ts and inject.ts both read it).
export const INJECT_HEADER = 'x-fastify-rooms-inject'
