/** Flag parsing for the CLI's commands (node:util parseArgs), with one-line errors that name the flag. */
import {parseArgs, ParseArgsConfig} from 'util';

import {UsageError} from './errors';

export type FlagSpec = NonNullable<ParseArgsConfig['options']>;
export type Flags = Record<string, string | boolean | undefined>;

/** Parses argv against the command's flags (plus --verbose and --help); unknown flags are errors. */
export function parseFlags(argv: string[], options: FlagSpec): Flags {
  try {
    const {values, positionals} = parseArgs({
      args: argv, options: {...options, verbose: {type: 'boolean'}, help: {type: 'boolean', short: 'h'}}, strict: true,
      allowPositionals: true,
    });
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
    return values as Flags;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
}

/** A flag's value as a number within [min, max] (integer when asked); `fallback` when absent. */
export function numberFlag(values: Flags, name: string, fallback: number,
                           {min = -Infinity, max = Infinity, integer = false} = {}): number {
  const raw = values[name];
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (raw === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || value > max) {
    const range = `${integer ? 'an integer' : 'a number'}${min > -Infinity ? ` ≥ ${min}` : ''}${max < Infinity ? ` and ≤ ${max}` : ''}`;
    throw new UsageError(`--${name} must be ${range}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

export function stringFlag(values: Flags, name: string): string | undefined {
  return values[name] as string | undefined;
}

export function requiredFlag(values: Flags, name: string): string {
  const value = values[name];
  if (typeof value !== 'string' || value === '') throw new UsageError(`--${name} is required`);
  return value;
}

export function choiceFlag<T extends string>(values: Flags, name: string, choices: readonly T[], fallback: T): T {
  const value = (values[name] as string | undefined) ?? fallback;
  if (!choices.includes(value as T)) throw new UsageError(`--${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}
