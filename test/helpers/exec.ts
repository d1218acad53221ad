// Running a command as a user's shell would, with a bound: without tap's loaders and tap's variables.
import { execFile } from 'node:child_process'

const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'NODE_OPTIONS' && name !== 'NODE_V8_COVERAGE' && !/^_?TAP/i.test(name)))
Object.assign(cleanEnv, { npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' })

export interface RunResult {
  code: number
  stdout: string
  stderr: string
}

/** Runs a command; resolves with its exit code and output (a command past `timeoutMs` is killed: code ≠ 0). */
export function runCommand (command: string, args: string[], cwd: string, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    // tap's process-info hook patches spawn to add its loaders to every child's NODE_OPTIONS: `env -u` drops them.
    execFile('env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', command, ...args], { cwd, timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024, env: cleanEnv }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

/** Runs a command that must succeed; resolves its stdout, rejects with both outputs. */
export async function run (command: string, args: string[], cwd: string, timeoutMs: number): Promise<string> {
  const result = await runCommand(command, args, cwd, timeoutMs)
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.code}):\n${result.stdout}\n${result.stderr}`)
  return result.stdout
}
