/** An error the CLI reports as one line (bad flag, missing file, wrong format), without a stack trace. */
export class UsageError extends Error {}
