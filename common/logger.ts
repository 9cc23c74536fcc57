import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

/** Paths pino must never print: secrets, tokens, passwords, exec environments. */
export const REDACT_PATHS = [
  "secret",
  "token",
  "password",
  "authorization",
  "*.secret",
  "*.token",
  "*.password",
  "*.authorization",
  "env",
  "*.env",
  "joinToken",
  "*.joinToken",
  "keyPem",
  "*.keyPem",
];

export function createLogger(opts: { name: string; level?: string; destination?: DestinationStream }): Logger {
  return pino(
    {
      name: opts.name,
      level: opts.level ?? "info",
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    },
    opts.destination ?? pino.destination(2),
  );
}

export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
