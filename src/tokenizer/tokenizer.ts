/**
 * A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) in pure JS: encoding and decoding
 * by @huggingface/tokenizers, chat templates as Transformers renders them. Ids match Python's
 * `tokenizers` / Transformers (tested on a Qwen3-style byte-level BPE, models/qwen3_moe/default).
 */
import {Tokenizer} from '@huggingface/tokenizers';

import {ChatMessage, ChatTemplateOptions, ChatTemplateRenderer, ChatTemplates, selectChatTemplate} from './chat_template';

export interface EncodeOptions {
  /** Add the tokens of the post-processor (BOS/EOS where the tokenizer has them; Qwen adds none). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special tokens (added tokens marked special, e.g. `<|im_end|>`; not `<think>`). Default false. */
  skipSpecialTokens?: boolean;
}

// Transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES): the template variables of special_tokens_map.
const NAMED_SPECIAL_TOKENS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token',
                              'mask_token'] as const;

export class HfTokenizer {
  /** Every id, added tokens included (Python's `len(tokenizer)`). */
  readonly vocabSize: number;
  /** The model's vocabulary without the added tokens (Transformers' `tokenizer.vocab_size`). */
  readonly baseVocabSize: number;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly unkTokenId: number | null;
  /** Ids of the named, additional and added special tokens, ascending (Transformers' `all_special_ids`). */
  readonly specialTokenIds: readonly number[];
  /** `model_max_length` of tokenizer_config.json, null where absent. */
  readonly modelMaxLength: number | null;

  private readonly tokenizer: Tokenizer;
  private readonly cleanUpSpaces: boolean;
  private readonly renderer: ChatTemplateRenderer;

  /**
   * @param tokenizerJson the parsed tokenizer.json
   * @param config the parsed tokenizer_config.json
   * @param chatTemplates the chat template(s), from the config or the folder's .jinja files (see loadTokenizer)
   */
  constructor(tokenizerJson: Record<string, unknown>, config: Record<string, unknown>,
              readonly chatTemplates: ChatTemplates = null) {
    this.tokenizer = new Tokenizer(tokenizerJson, config);
    const vocab = this.tokenizer.get_vocab(true);
    this.vocabSize = vocab.size;
    this.baseVocabSize = this.tokenizer.get_vocab(false).size;

    const named: Record<string, string> = {};
    for (const key of NAMED_SPECIAL_TOKENS) {
      const token = tokenContent(config[key], key);
      if (token !== null) named[key] = token;
    }
    this.bosToken = named.bos_token ?? null;
    this.eosToken = named.eos_token ?? null;
    this.padToken = named.pad_token ?? null;
    this.unkToken = named.unk_token ?? null;
    this.bosTokenId = this.idOf(this.bosToken);
    this.eosTokenId = this.idOf(this.eosToken);
    this.padTokenId = this.idOf(this.padToken);
    this.unkTokenId = this.idOf(this.unkToken);

    // Transformers 5 names them extra_special_tokens, a list or (model-specific tokens) an object.
    const extra = config.additional_special_tokens ?? config.extra_special_tokens ?? [];
    if (typeof extra !== 'object' || extra === null) {
      throw new TypeError('tokenizer_config: additional_special_tokens must be a list or an object');
    }
    const additional: unknown[] = Array.isArray(extra) ? extra : Object.values(extra);
    const special = new Set<number>();
    for (const [id, token] of this.tokenizer.get_added_tokens_decoder()) if (token.special) special.add(id);
    for (const token of [...Object.values(named), ...additional.map(t => tokenContent(t, 'additional_special_tokens'))]) {
      const id = token === null ? undefined : vocab.get(token);
      if (id !== undefined) special.add(id);
    }
    this.specialTokenIds = [...special].sort((a, b) => a - b);
    this.modelMaxLength = typeof config.model_max_length === 'number' ? config.model_max_length : null;
    // Transformers 5 skips this clean-up for BPE unless forced: it deletes real spaces before punctuation.
    const model = tokenizerJson.model as {type?: string};
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true &&
        (model.type !== 'BPE' || config.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output === true);
    this.renderer = new ChatTemplateRenderer(named);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TypeError(`encode: text must be a string, got ${typeof text}`);
    return this.tokenizer.encode(text, {add_special_tokens: options.addSpecialTokens ?? true}).ids;
  }

  /** Encodes each text; words seen before are cheap (@huggingface/tokenizers caches 10k words' BPE). */
  encodeBatch(texts: readonly string[], options: EncodeOptions = {}): number[][] {
    return texts.map(t => this.encode(t, options));
  }

  /** Ids without a token (beyond the vocabulary, as in a padded embedding) decode to nothing, as in Python. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const known: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0) throw new RangeError(`decode: ids[${i}] = ${id} is not a token id`);
      if (this.tokenizer.id_to_token(id) !== undefined) known.push(id);
    }
    if (known.length === 0) return '';  // @huggingface/tokenizers throws on an empty list
    return this.tokenizer.decode(known, {
      skip_special_tokens: options.skipSpecialTokens ?? false, clean_up_tokenization_spaces: this.cleanUpSpaces,
    });
  }

  /** The id of a token (`<|im_end|>`, or a vocabulary entry such as `Ġworld`), undefined where there is none. */
  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }

  /** The chat rendered to text, exactly as Transformers' `apply_chat_template(..., tokenize=False)`. */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const template = selectChatTemplate(this.chatTemplates, options.chatTemplate, options.tools !== undefined);
    return this.renderer.render(template, messages, options);
  }

  /** The chat's ids: the rendering encoded without added special tokens, as `apply_chat_template` tokenizes it. */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, options), {addSpecialTokens: false});
  }

  private idOf(token: string | null): number | null {
    return token === null ? null : this.tokenizer.token_to_id(token) ?? null;
  }
}

/** A special token in tokenizer_config.json: a string, or an AddedToken object with `content`. */
function tokenContent(value: unknown, key: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && typeof (value as {content?: unknown}).content === 'string') {
    return (value as {content: string}).content;
  }
  throw new TypeError(`tokenizer_config: ${key} must be a string or an object with "content", got ${JSON.stringify(value)}`);
}
