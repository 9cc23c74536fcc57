// Which base image a VM's root disk is layered over, pure. Tenants name images; they never
// give paths (a path would let a VM's overlay read any file on the host as its disk).
import { join } from "node:path";
import { invalid } from "../../../common/errors.js";

export const DEFAULT_IMAGE = "rootfs.ext4";
const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/i;
const EXTENSIONS = ["", ".qcow2", ".ext4", ".raw", ".img"];

/** Files to try, in order, for an image name ("" or "default": the guest's base image). */
export function imageCandidates(image: string, imagesDir: string): string[] {
  if (image === "" || image === "default") return [join(imagesDir, DEFAULT_IMAGE)];
  if (!IMAGE_NAME.test(image) || image.includes("..")) throw invalid("image", `${JSON.stringify(image)} is not an image name`);
  return EXTENSIONS.map((ext) => join(imagesDir, image + ext));
}

export interface ImageInfo {
  format: string;
  virtualSize: number;
}

/** Parses `qemu-img info --output=json`. */
export function parseImageInfo(json: string): ImageInfo {
  const j = JSON.parse(json) as { format?: string; "virtual-size"?: number };
  if (!j.format) throw new Error("qemu-img info: no format");
  return { format: j.format, virtualSize: j["virtual-size"] ?? 0 };
}

/** The overlay's size: the VM's disk size, never smaller than its base (qemu-img refuses that). */
export function overlaySize(diskGb: number, base: ImageInfo): number | undefined {
  const want = Math.floor(diskGb * 2 ** 30);
  return want > base.virtualSize ? want : undefined;
}
