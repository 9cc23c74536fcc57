// Builds the noidctl command tree and runs it; returns the exit code instead
// of exiting so tests can drive it in-process.
import { Command, CommanderError, Option } from "commander";
import { App, type AppDeps } from "./app.js";
import { registerAuditCommand } from "./commands/audit.js";
import { registerEventsCommand } from "./commands/events.js";
import { registerAuthCommands } from "./commands/auth.js";
import { registerContextCommands } from "./commands/context.js";
import { registerHostCommands } from "./commands/host.js";
import { registerNetworkCommands } from "./commands/network.js";
import { registerMeshCommands } from "./commands/mesh.js";
import { registerTokenCommands } from "./commands/token.js";
import { registerVmCommands } from "./commands/vm.js";
import { registerExecCommand } from "./commands/exec.js";
import { registerCheckpointCommands } from "./commands/checkpoint.js";
import { registerLifecycleCommands } from "./commands/lifecycle.js";
import { registerMigrateCommand } from "./commands/migrate.js";
import { registerUserCommands } from "./commands/user.js";
import { registerSshKeyCommands } from "./commands/ssh-key.js";
import { registerPortCommands } from "./commands/ports.js";
import { describeError } from "./errors.js";
import { OUTPUT_FORMATS } from "./render.js";
import type { GlobalFlags } from "./settings.js";

export function buildProgram(deps: AppDeps): { program: Command; app: App } {
  const program = new Command("noidctl");
  const app = new App(deps, () => program.opts<GlobalFlags>());
  program
    .description("Manage microVMs on a Noid mesh cluster.")
    .addOption(new Option("--context <name>", "use this saved context instead of the current one"))
    .addOption(new Option("--server <address>", "coordinator host:port, unix:/path, or replicas a:7654,b:7654 (env NOID_SERVER wins)"))
    .addOption(new Option("-o, --output <format>", "output format").choices(OUTPUT_FORMATS).default("table"))
    .addOption(new Option("--insecure", "plaintext gRPC (loopback or unix socket only)"))
    .addOption(new Option("--ca-file <path>", "CA certificate (PEM) the coordinator's certificate is checked against"))
    .addOption(new Option("--timeout <seconds>", "deadline for each API call (default 10)"))
    // Settings that subcommands inherit must be set before they are added.
    .exitOverride()
    .configureOutput({ writeOut: deps.io.stdout, writeErr: deps.io.stderr })
    .showHelpAfterError("(run with --help for usage)")
    .addHelpText(
      "after",
      `
Configuration: ~/.noid/config.toml (NOID_CONFIG overrides the path); NOID_SERVER
and NOID_TOKEN override flags and contexts; NOID_INSECURE=1 is --insecure,
NOID_CA_FILE is --ca-file.

Examples:
  noidctl auth setup --server localhost:7654 --insecure --token-stdin < token.txt
  noidctl create web --vcpus 2 --memory 1024 --wait
  noidctl list -o wide
  noidctl hosts`,
    );

  registerVmCommands(program, app);
  registerExecCommand(program, app);
  registerCheckpointCommands(program, app);
  registerLifecycleCommands(program, app);
  registerMigrateCommand(program, app);
  registerHostCommands(program, app);
  registerNetworkCommands(program, app);
  registerMeshCommands(program, app);
  registerAuthCommands(program, app);
  registerContextCommands(program, app);
  registerTokenCommands(program, app);
  registerAuditCommand(program, app);
  registerEventsCommand(program, app);
  registerUserCommands(program, app);
  registerSshKeyCommands(program, app);
  registerPortCommands(program, app);
  return { program, app };
}

/** Runs noidctl with `argv` (without node and script); resolves to the exit code. */
export async function run(argv: readonly string[], deps: AppDeps): Promise<number> {
  const { program, app } = buildProgram(deps);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return app.exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Commander has already printed help or its usage error.
      return e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.exitCode === 0 ? 0 : 2;
    }
    const report = describeError(e, app.serverForHints());
    deps.io.stderr(`error: ${report.message}\n`);
    return report.exitCode;
  } finally {
    app.close();
  }
}
