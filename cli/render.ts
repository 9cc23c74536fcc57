// The one renderer for every list and get: table (compact, borderless),
// wide (table plus the columns marked wide), json (the proto JSON mapping via
// ts-proto's toJSON) and yaml (the same data). Pure: returns the text.
import Table from "cli-table3";
import { stringify as yamlStringify } from "yaml";
import { UsageError } from "./parse.js";

export const OUTPUT_FORMATS = ["table", "wide", "json", "yaml"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export function parseFormat(text: string): OutputFormat {
  if ((OUTPUT_FORMATS as readonly string[]).includes(text)) return text as OutputFormat;
  throw new UsageError(`--output must be one of ${OUTPUT_FORMATS.join(", ")} (got "${text}")`);
}

export interface Column<T> {
  header: string;
  value: (item: T, now: Date) => string;
  /** Only in -o wide. */
  wide?: boolean;
}

export interface View<T> {
  columns: ReadonlyArray<Column<T>>;
  toJSON: (item: T) => unknown;
}

export interface RenderOptions {
  /** Colour the header; only when stdout is a terminal. */
  color: boolean;
  /** "Now" for AGE-style columns; injected so output is reproducible. */
  now: Date;
}

const NO_BORDERS = {
  top: "", "top-mid": "", "top-left": "", "top-right": "",
  bottom: "", "bottom-mid": "", "bottom-left": "", "bottom-right": "",
  left: "", "left-mid": "", mid: "", "mid-mid": "",
  right: "", "right-mid": "", middle: "",
};

function table<T>(view: View<T>, items: readonly T[], wide: boolean, opts: RenderOptions): string {
  const cols = view.columns.filter((c) => wide || !c.wide);
  const t = new Table({
    head: cols.map((c) => c.header),
    chars: NO_BORDERS,
    style: { head: opts.color ? ["bold"] : [], border: [], compact: true, "padding-left": 0, "padding-right": 3 },
  });
  for (const item of items) t.push(cols.map((c) => c.value(item, opts.now)));
  // cli-table3 pads the last column too; trailing blanks only make diffs noisy.
  return t.toString().split("\n").map((l) => l.trimEnd()).join("\n") + "\n";
}

export function renderList<T>(view: View<T>, items: readonly T[], format: OutputFormat, opts: RenderOptions): string {
  switch (format) {
    case "table":
    case "wide":
      return table(view, items, format === "wide", opts);
    case "json":
      return JSON.stringify(items.map(view.toJSON), null, 2) + "\n";
    case "yaml":
      return yamlStringify(items.map(view.toJSON));
  }
}

/** One item: as "Key: value" lines with every column (wide ones too), or as json/yaml. */
export function renderOne<T>(view: View<T>, item: T, format: OutputFormat, opts: RenderOptions): string {
  switch (format) {
    case "table":
    case "wide": {
      const rows = view.columns.map((c) => [titleCase(c.header) + ":", c.value(item, opts.now)] as const);
      const width = Math.max(...rows.map(([k]) => k.length)) + 1;
      return rows.map(([k, v]) => `${k.padEnd(width)}${v}`).join("\n") + "\n";
    }
    case "json":
      return JSON.stringify(view.toJSON(item), null, 2) + "\n";
    case "yaml":
      return yamlStringify(view.toJSON(item));
  }
}

/**
 * One line per item for a stream (list --watch): fixed-width columns, since the
 * widths cannot be known ahead; json is one object per line, yaml one document.
 */
export function renderStreamItem<T>(
  view: View<T>,
  item: T,
  format: OutputFormat,
  opts: RenderOptions & { header: boolean },
): string {
  switch (format) {
    case "table":
    case "wide": {
      const cols = view.columns.filter((c) => format === "wide" || !c.wide);
      const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(STREAM_WIDTH - 1) + " ")).join("").trimEnd();
      const body = line(cols.map((c) => c.value(item, opts.now)));
      return (opts.header ? line(cols.map((c) => c.header)) + "\n" : "") + body + "\n";
    }
    case "json":
      return JSON.stringify(view.toJSON(item)) + "\n";
    case "yaml":
      return "---\n" + yamlStringify(view.toJSON(item));
  }
}

const STREAM_WIDTH = 16;

const KEEP = new Map([["IP", "IP"], ["ID", "ID"], ["VNI", "VNI"], ["CIDR", "CIDR"], ["CPU", "CPU"], ["VMS", "VMs"], ["VCPUS", "vCPUs"]]);

/** "LAST SEEN" → "Last seen", keeping acronyms ("IP", "vCPUs"). */
function titleCase(header: string): string {
  const words = header.split(" ").map((w, i) => KEEP.get(w) ?? (i === 0 ? w.charAt(0) + w.slice(1).toLowerCase() : w.toLowerCase()));
  return words.join(" ");
}
