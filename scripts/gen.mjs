// Generates TypeScript from proto/ into gen/ (ignored by git) with buf + ts-proto.
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const buf = join(root, "node_modules", ".bin", "buf");
rmSync(join(root, "gen"), { recursive: true, force: true });
execFileSync(buf, ["lint"], { cwd: root, stdio: "inherit" });
execFileSync(buf, ["generate"], { cwd: root, stdio: "inherit" });
