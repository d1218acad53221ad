// The style fastify's own packages use (neostandard), with its TypeScript rules.
import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'packages/*/dist/**', '.type-tests/**', '.tap/**', 'test-artifacts/**', 'bench/results/**', '.readme-snippets/**', 'coverage/**'],
  }),
  {
    rules: {
      // `void promise` marks a promise whose outcome is handled elsewhere (it has its own catch).
      'no-void': ['error', { allowAsStatement: true }],
      // \`export const ErrorCode = {…}\` beside \`export type ErrorCode\` is the enum pattern; tsc reports real redeclarations.
      '@typescript-eslint/no-redeclare': 'off',
    },
  },
]
