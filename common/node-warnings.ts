// grpc-js gives Node's TLS an IP address as the server name when the coordinator is
// addressed by IP (the certificate is still checked against that IP), and Node warns
// about it (DEP0123) once per process. Nothing a user can act on: that one warning is
// dropped; any other is printed as Node would. For processes that talk to a coordinator
// as a client and print to a user (noidctl, the demo).
export function dropTlsIpServernameWarning(): void {
  process.removeAllListeners("warning");
  process.on("warning", (w: Error & { code?: string }) => {
    if (w.code === "DEP0123") return;
    process.stderr.write(`(node:${process.pid}) ${w.code ? `[${w.code}] ` : ""}${w.name}: ${w.message}\n`);
  });
}
