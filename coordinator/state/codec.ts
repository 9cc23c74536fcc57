// Records are stored as binary protobuf, everywhere (ARCHITECTURE.md: one choice).
import type { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";

export interface MessageCodec<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): T;
}

export function enc<T>(codec: MessageCodec<T>, msg: T): Uint8Array {
  return codec.encode(msg).finish();
}

export function dec<T>(codec: MessageCodec<T>, bytes: Uint8Array): T {
  return codec.decode(bytes);
}
