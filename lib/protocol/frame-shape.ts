// A frame's shape, bounded before it is parsed. JSON.parse and a schema's error report cost time in the
// number of keys, not bytes (a 57 KB frame of 6000 unknown keys took 25–36 ms): one pass over the raw
// bytes refuses frames nested deeper than maxDepth or holding more than maxKeys keys and array
// elements, so no client can buy much CPU with one frame.

export interface FrameShapeLimits {
  maxDepth: number
  maxKeys: number
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
const OPEN_OBJECT = 0x7b
const CLOSE_OBJECT = 0x7d
const OPEN_ARRAY = 0x5b
const CLOSE_ARRAY = 0x5d
const COLON = 0x3a
const COMMA = 0x2c

/**
 * Why the frame is refused, or undefined. Works on UTF-8 bytes: every byte of a multi-byte character is
 * >= 0x80, so none is mistaken for a quote or a bracket. Malformed JSON is left for JSON.parse to report.
 */
export function frameShapeProblem (data: Uint8Array, limits: FrameShapeLimits): string | undefined {
  // Cannot exceed either limit: not worth the scan.
  if (data.length <= Math.min(limits.maxDepth, limits.maxKeys)) return undefined
  let depth = 0
  let keys = 0
  let inString = false
  // inArray[d]: the container at depth d is an array (d never passes maxDepth).
  const inArray: boolean[] = []
  for (let i = 0; i < data.length; i++) {
    const byte = data[i]!
    if (inString) {
      if (byte === BACKSLASH) i++
      else if (byte === QUOTE) inString = false
      continue
    }
    switch (byte) {
      case QUOTE:
        inString = true
        break
      case OPEN_OBJECT:
      case OPEN_ARRAY:
        if (++depth > limits.maxDepth) return `is nested deeper than ${limits.maxDepth} levels`
        inArray[depth] = byte === OPEN_ARRAY
        // An array's first element has no comma before it.
        if (byte === OPEN_ARRAY && data[i + 1] !== CLOSE_ARRAY && ++keys > limits.maxKeys) return tooManyKeys(limits)
        break
      case CLOSE_OBJECT:
      case CLOSE_ARRAY:
        depth--
        break
      case COLON:
        if (++keys > limits.maxKeys) return tooManyKeys(limits)
        break
      case COMMA:
        if (inArray[depth] === true && ++keys > limits.maxKeys) return tooManyKeys(limits)
        break
    }
  }
  return undefined
}

function tooManyKeys (limits: FrameShapeLimits): string {
  return `has more than ${limits.maxKeys} keys and array elements`
}
