/**
 * Chat templates rendered as Transformers' `apply_chat_template` renders them (transformers 5.24,
 * utils/chat_template_utils.py): the same preparation of the messages, the same variables and
 * globals, Jinja through @huggingface/jinja (trim_blocks and lstrip_blocks, as Transformers sets).
 */
import {Template} from '@huggingface/jinja';

/** One chat message: `role`, `content` and whatever else the template reads (tool_calls, reasoning_content, ...). */
export interface ChatMessage {
  role: string;
  content?: unknown;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the header of a new assistant turn (`add_generation_prompt`). */
  addGenerationPrompt?: boolean;
  /**
   * End the text inside the last message so the model continues it (`continue_final_message`);
   * a string names the field to continue (default `content`).
   */
  continueFinalMessage?: boolean | string;
  /** JSON schemas of the tools the model may call (`tools`). */
  tools?: object[];
  /** Documents for retrieval-augmented generation (`documents`). */
  documents?: object[];
  /** A template text, or the name of one of the tokenizer's templates (`chat_template`). */
  chatTemplate?: string;
  /** Anything else is a template variable, as Transformers' `**kwargs`: e.g. `enable_thinking: false`. */
  [kwarg: string]: unknown;
}

/** The templates of a tokenizer folder: one, or several by name (`default`, `tool_use`, ...). */
export type ChatTemplates = string | ReadonlyMap<string, string> | null;

// Transformers' own argument names: passing them as template variables is a mistake in this API.
const RESERVED_KWARGS: Record<string, string> = {
  messages: 'the messages argument', tools: 'tools', documents: 'documents',
  add_generation_prompt: 'addGenerationPrompt', continue_final_message: 'continueFinalMessage',
  chat_template: 'chatTemplate',
};
const OPTIONS = new Set(['addGenerationPrompt', 'continueFinalMessage', 'tools', 'documents', 'chatTemplate']);
// Names a message's reasoning is passed under; Transformers fills all of them from the first one set.
const REASONING_FIELDS = ['reasoning_content', 'thinking', 'reasoning'];
const CONTINUE_TAG = 'CONTINUE_FINAL_MESSAGE_TAG ';

/** Transformers' `get_chat_template`: the template text to render. */
export function selectChatTemplate(templates: ChatTemplates, chatTemplate: string | undefined,
                                   hasTools: boolean): string {
  if (templates !== null && typeof templates !== 'string') {
    if (chatTemplate !== undefined) return templates.get(chatTemplate) ?? chatTemplate;
    const named = (hasTools ? templates.get('tool_use') : undefined) ?? templates.get('default');
    if (named === undefined) {
      throw new Error('applyChatTemplate: the tokenizer has several chat templates and no "default"; pass ' +
                      `chatTemplate with one of ${[...templates.keys()].sort().join(', ')}`);
    }
    return named;
  }
  const text = chatTemplate ?? templates;
  if (text === null) {
    throw new Error('applyChatTemplate: the tokenizer has no chat template (chat_template in ' +
                    'tokenizer_config.json or chat_template.jinja) and options.chatTemplate is not set');
  }
  return text;
}

/** Renders compiled templates, each compiled once. */
export class ChatTemplateRenderer {
  private readonly compiled = new Map<string, Template>();

  /**
   * @param specialTokens Transformers' `special_tokens_map` (bos_token, eos_token, ... that are set),
   *   template variables that the caller's options override.
   */
  constructor(private readonly specialTokens: Readonly<Record<string, string>>) {}

  render(template: string, messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!Array.isArray(messages)) throw new TypeError('applyChatTemplate: messages must be an array of messages');
    if (messages.length === 0) {
      throw new Error('applyChatTemplate: cannot apply the chat template to an empty conversation');
    }
    const addGenerationPrompt = options.addGenerationPrompt ?? false;
    const kwargs: Record<string, unknown> = {...this.specialTokens};
    for (const [key, value] of Object.entries(options)) {
      if (OPTIONS.has(key)) continue;
      if (key in RESERVED_KWARGS) {
        throw new Error(`applyChatTemplate: pass ${key} as ${RESERVED_KWARGS[key]}, not as a template variable`);
      }
      kwargs[key] = value;
    }
    const chat = messages.map((m, i) => prepareMessage(m, i));

    const cont = options.continueFinalMessage ?? false;
    let finalText = '';
    if (cont !== false) {
      if (addGenerationPrompt) {
        throw new Error('applyChatTemplate: continueFinalMessage and addGenerationPrompt are not compatible: ' +
                        'continue the final message, or add a header for a new assistant message');
      }
      finalText = tagFinalMessage(chat[chat.length - 1], cont === true ? 'content' : cont, template);
    }

    let rendered: string;
    try {
      rendered = this.compile(template).render({
        messages: chat, tools: options.tools ?? null, documents: options.documents ?? null,
        add_generation_prompt: addGenerationPrompt, ...kwargs,
      });
    } catch (e) {
      throw new Error(`applyChatTemplate: the chat template failed: ${(e as Error).message}`);
    }
    return cont === false ? rendered : cutAtTag(rendered, finalText);
  }

  private compile(template: string): Template {
    let t = this.compiled.get(template);
    if (!t) {
      try {
        t = new Template(template);
      } catch (e) {
        throw new Error(`applyChatTemplate: the chat template does not parse: ${(e as Error).message}`);
      }
      this.compiled.set(template, t);
    }
    return t;
  }
}

/** Transformers drops keys set to None (`content: None` from OpenAI-style APIs) and aliases reasoning fields. */
function prepareMessage(m: ChatMessage, i: number): Record<string, unknown> {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) {
    throw new TypeError(`applyChatTemplate: messages[${i}] must be an object, got ${JSON.stringify(m)}`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(m)) {
    if (value !== null && value !== undefined) out[key] = value;
  }
  const reasoning = REASONING_FIELDS.map(f => out[f]).find(v => v !== undefined);
  // Key order as Transformers builds it ({"thinking": r, **message, "reasoning_content": r}): tojson shows it.
  return reasoning === undefined ? out : {thinking: reasoning, ...out, reasoning_content: reasoning};
}

/** Appends the continue tag to the last message's field (copied, never the caller's); returns the text continued. */
function tagFinalMessage(last: Record<string, unknown>, field: string, template: string): string {
  const final = last[field];
  if (final === undefined) {
    throw new Error(`applyChatTemplate: continueFinalMessage is set but the final message has no "${field}"`);
  }
  const fields = REASONING_FIELDS.includes(field) ? REASONING_FIELDS.filter(f => last[f] === final) : [field];
  if (!fields.some(f => template.includes(f))) {
    throw new Error(`applyChatTemplate: continueFinalMessage is set to "${field}", which the chat template never reads`);
  }
  if (Array.isArray(final)) {
    const blocks = final.map(b => (typeof b === 'object' && b !== null ? {...b} : b));
    for (let i = blocks.length - 1; i >= 0; i--) {
      const block = blocks[i] as Record<string, unknown>;
      if (typeof block === 'object' && block !== null && 'text' in block) {
        const text = String(block.text);
        block.text = text + CONTINUE_TAG;
        last[field] = blocks;
        return text;
      }
    }
    throw new Error('applyChatTemplate: continueFinalMessage is set but the final message has no text block');
  }
  if (typeof final !== 'string') {
    throw new TypeError(`applyChatTemplate: the final message's "${field}" is neither a string nor content blocks`);
  }
  for (const f of fields) last[f] = final + CONTINUE_TAG;
  return final;
}

/** Cuts the rendering where the continued message ends, as Transformers does. */
function cutAtTag(rendered: string, finalText: string): string {
  const tag = CONTINUE_TAG.trim();
  if (!rendered.includes(finalText.trim()) || !rendered.includes(tag)) {
    throw new Error('applyChatTemplate: continueFinalMessage is set but the final message does not appear in the ' +
                    'rendered chat (the template changes it)');
  }
  const at = rendered.lastIndexOf(tag);
  // The template may have trimmed the tag's trailing space: then trailing spacing cannot be trusted either.
  return rendered.startsWith(CONTINUE_TAG, at) ? rendered.slice(0, at) : rendered.slice(0, at).trimEnd();
}
