// What the client reads of its own token: only `exp`, to refresh it in time (the server verifies it).

/** The token's exp in ms, read without verifying (the server verifies); undefined when absent or unreadable. */
export function tokenExp (token: string): number | undefined {
  try {
    const part = token.split('.')[1] ?? ''
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'))
    const exp = (JSON.parse(json) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}
