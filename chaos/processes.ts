// The host app's server processes, each behind a chaos proxy: started, killed (SIGKILL), paused
// (SIGSTOP/SIGCONT) and restarted on a new port the proxy then points at. An exit nobody asked for is
// recorded for the checker, as is every handler run a host reports.
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import type { CampaignHistory } from './history.js'
import { startChaosProxy, type ChaosProxy, type MangleSettings } from './proxy.js'

const HOST = new URL('./host.ts', import.meta.url).pathname

export class HostProcess {
  private child: ChildProcess | undefined
  private expectingExit = false
  private paused = false
  port = 0

  private constructor (readonly name: string, readonly proxy: ChaosProxy, private readonly env: Record<string, string>, private readonly history: CampaignHistory, private readonly now: () => number) {}

  static async start (name: string, env: Record<string, string>, history: CampaignHistory, now: () => number, mangle?: MangleSettings): Promise<HostProcess> {
    const proxy = await startChaosProxy(0, mangle)
    const host = new HostProcess(name, proxy, env, history, now)
    await host.spawn()
    return host
  }

  get running (): boolean {
    return this.child !== undefined
  }

  private async spawn (): Promise<void> {
    const child = spawn(process.execPath, ['--import=tsx', HOST], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...this.env, CHAOS_PARENT_PIPE: '1' } })
    this.child = child
    this.expectingExit = false
    this.paused = false
    let stderr = ''
    child.stderr!.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-20_000) })
    // At once, not after the start: a process killed while it starts must not be taken for a live one.
    // A process that exits before it listens did not start (register fails while Redis or PostgreSQL is
    // away, as documented): restart() tries again; only a running process's exit is a crash.
    let listening = false
    child.once('exit', (code, signal) => {
      if (this.child === child) this.child = undefined
      if (listening && !this.expectingExit) this.history.unexpectedExits.push({ at: this.now(), process: `${this.name}: ${stderr.slice(-3000)}`, code, signal })
    })
    const lines = createInterface({ input: child.stdout! })
    const port = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name} did not start within 30 s: ${stderr}`)), 30_000)
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`${this.name} exited with ${code} while starting`))
      })
      lines.once('line', (line) => {
        clearTimeout(timer)
        resolve(Number(line))
      })
    })
    this.port = await port
    listening = true
    lines.on('line', (line) => {
      const [word, user, id] = line.split(' ')
      if (word === 'ran' && user !== undefined && id !== undefined) this.history.handlerRuns.push({ at: this.now(), user, id, process: this.name })
    })
    this.proxy.target = this.port
  }

  /** SIGKILL, as a crash; `restart` brings it back. */
  async kill (): Promise<void> {
    const child = this.child
    if (child === undefined) return
    this.expectingExit = true
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGKILL')
    await exited
    this.paused = false
  }

  /**
   * Starts it again unless it runs; a start cut short (a kill fault, a broker still away) is tried again,
   * every half second for up to a minute.
   */
  async restart (): Promise<void> {
    for (let attempt = 0; this.child === undefined; attempt++) {
      try {
        await this.spawn()
      } catch (err) {
        if (attempt === 120) throw err
        await new Promise((resolve) => setTimeout(resolve, 500))
      }
    }
  }

  pause (): void {
    if (this.child === undefined || this.paused) return
    this.paused = true
    this.child.kill('SIGSTOP')
  }

  resume (): void {
    if (!this.paused) return
    this.paused = false
    this.child?.kill('SIGCONT')
  }

  /** A graceful stop (SIGTERM) at the campaign's end. */
  async stop (): Promise<void> {
    this.resume()
    const child = this.child
    if (child !== undefined) {
      this.expectingExit = true
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    }
    await this.proxy.close()
  }
}
