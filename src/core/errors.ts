// The errors Lapse stops on, each with a stable ERR_* code that the CLI prints before the message.
//
//   throw new ConfigError('ERR_RULES_INVALID', 'LAPSE_ROUTES: …')

export class ConfigError extends Error {
  constructor(readonly code: 'ERR_CONFIG_INVALID' | 'ERR_CONFIG_FILE' | 'ERR_RULES_INVALID' | 'ERR_RULES_DUPLICATE', message: string) {
    super(message)
  }
}
