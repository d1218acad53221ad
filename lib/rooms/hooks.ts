// Running a host's hook (onConnect, onDisconnect) so that it cannot hold anything up: it is waited for at
// most `timeoutMs`; one that hangs keeps running, unwatched, and the caller carries on.

export class HookTimeout extends Error {}

export async function runHook (hook: () => Promise<void>, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([hook(), new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new HookTimeout()), timeoutMs)
    })])
  } finally {
    clearTimeout(timer)
  }
}
