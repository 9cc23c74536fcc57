// The pure VM scheduler: filters (hard constraints), scores (preferences) and
// decisions as data. No I/O anywhere under scheduler/.
export type { Decision, HostView, Policy, Res, VmRequest } from "./types.js";
export { FILTER_NAMES, anyHostFits, filterHosts, fitsResources, passesStatic, rejectedBy, unplacedReason, type FilterName } from "./filter.js";
export { ANTI_AFFINITY_PENALTY, NETWORK_BONUS, scoreHost, utilisationAfter } from "./score.js";
export { BatchScheduler, applyPlacement, releasePlacement, scheduleBatch, scheduleOne } from "./schedule.js";
