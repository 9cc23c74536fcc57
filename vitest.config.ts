import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Privileged end-to-end tests create namespaces with run-unique prefixes,
    // so files may run in parallel.
    fileParallelism: true,
  },
});
