// Asking for a secret on a terminal without echoing it: the terminal is put in
// raw mode, keys are read one by one (pure: `promptKeys`), and the mode is
// restored whatever happens. Used by `noidctl login` when stdin is a TTY.
import { UsageError } from "./parse.js";

export interface PromptState {
  text: string;
  done: boolean;
  /** Ctrl-C: the user gave up. */
  cancelled: boolean;
}

/**
 * Pure: applies typed input to the state. Enter (CR or LF) ends the line,
 * Backspace/DEL removes the last character, Ctrl-U clears the line, Ctrl-C
 * cancels, Ctrl-D ends the input (on an empty line: an empty answer); other
 * control characters and escape sequences (arrow keys) are ignored.
 */
export function promptKeys(state: PromptState, input: string): PromptState {
  let { text, done, cancelled } = state;
  const chars = [...input];
  for (let i = 0; i < chars.length && !done && !cancelled; i++) {
    const ch = chars[i]!;
    const code = ch.codePointAt(0)!;
    if (ch === "\r" || ch === "\n" || ch === "\x04") done = true;
    else if (ch === "\x03") cancelled = true;
    else if (ch === "\x7f" || ch === "\b") text = [...text].slice(0, -1).join("");
    else if (ch === "\x15") text = "";
    else if (ch === "\x1b") {
      // CSI sequence (ESC [ ... final byte 0x40-0x7e): skip it whole.
      if (chars[i + 1] === "[") {
        i += 2;
        while (i < chars.length && !/[\x40-\x7e]/.test(chars[i]!)) i++;
      }
    } else if (code >= 0x20) text += ch;
  }
  return { text, done, cancelled };
}

/** The terminal side of a prompt: what process.stdin (a tty.ReadStream) offers. */
export interface PromptInput {
  isTTY?: boolean;
  setRawMode?(on: boolean): unknown;
  on(ev: "data", f: (d: Buffer | string) => void): unknown;
  off(ev: "data", f: (d: Buffer | string) => void): unknown;
  resume(): unknown;
  pause(): unknown;
}

/**
 * Writes `question` to `out` and reads one line from the terminal `input`;
 * with echo off nothing typed is shown. Rejects with a UsageError on Ctrl-C.
 */
export function promptLine(input: PromptInput, out: (s: string) => void, question: string, opts: { echo: boolean }): Promise<string> {
  out(question);
  let state: PromptState = { text: "", done: false, cancelled: false };
  const raw = typeof input.setRawMode === "function";
  if (raw) input.setRawMode!(true);
  return new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer | string) => {
      const s = typeof d === "string" ? d : d.toString("utf8");
      const before = state.text;
      state = promptKeys(state, s);
      // Echo also when the chunk ends the line (a paste, or a fast terminal: "123456\r" in one read).
      if (opts.echo && !state.cancelled) {
        // Echo what was added; a deletion is shown as backspace-space-backspace.
        if (state.text.startsWith(before)) out(state.text.slice(before.length));
        else out("\b \b".repeat([...before].length - [...state.text].length));
      }
      if (!state.done && !state.cancelled) return;
      input.off("data", onData);
      if (raw) input.setRawMode!(false);
      input.pause();
      out("\n");
      if (state.cancelled) reject(new UsageError("interrupted"));
      else resolve(state.text);
    };
    input.on("data", onData);
    input.resume();
  });
}
