// The page's words in English and Japanese. Elements carry `data-i18n` (text),
// `data-i18n-aria` (aria-label), `data-i18n-title` or `data-i18n-placeholder` with a key below,
// and `data-i18n-args` (JSON) for the {placeholders}; `applyLanguage` fills them all, so a
// language switch relabels everything already on the page, streamed answers excepted.

export const LANGUAGES = { en: "English", ja: "日本語" };

export const MESSAGES = {
  en: {
    appTitle: "tokenrelay",
    sessions: "Chats",
    sessionsLabel: "Earlier chats",
    noSessions: "No earlier chats yet.",
    untitled: "(untitled)",
    newChat: "New chat",
    deleteSession: "Delete chat",
    deleteConfirm: "Delete this chat and its history?",
    language: "Language",
    apiKey: "API key",
    apiKeyPrompt: "This server needs an API key. It is kept in this browser only.",
    apiKeyInvalid: "The API key was not accepted.",
    save: "Save",
    cancel: "Cancel",
    inputLabel: "Your message",
    placeholder: "Ask something… (Enter to send, Shift+Enter for a new line)",
    send: "Send",
    stop: "Stop",
    stopLabel: "Stop generating",
    stopping: "Stopping…",
    emptyTitle: "Ask anything",
    emptyHint: "Answers stream in as they are written. Attach a text, Markdown or notebook file to ask about it.",
    attach: "Attach document",
    attachHint: "Text, Markdown or Jupyter notebook (.ipynb)",
    attaching: "Attaching {name}…",
    attached: "Document: {name} ({chars} characters)",
    attachedName: "Document: {name}",
    truncated:
      "Only part of {name} fits the model's context window: the model sees the first {kept} of {total} characters ({pct}%). The rest was left out.",
    attachFailed: "Could not attach {name}: {message}",
    presets: "Questions about the document",
    you: "You",
    assistant: "Answer",
    answerDone: "The answer is complete.",
    tool: "Tool: {name}",
    toolInput: "Input",
    toolResult: "Result",
    toolError: "Error",
    toolRunning: "running…",
    toolDone: "done",
    toolFailed: "failed",
    showReasoning: "Show reasoning",
    hideReasoning: "Hide reasoning",
    copy: "Copy",
    copyLabel: "Copy answer",
    copied: "Copied",
    retry: "Retry",
    retryLabel: "Send the question again",
    stopped: "Stopped.",
    interrupted: "Interrupted",
    failed: "Failed",
    running: "Still running…",
    connectionLost: "The connection was lost before the answer was complete.",
    cancelledElsewhere: "The answer was stopped before it was complete (from another window, or the server).",
    reconnecting: "Connection lost; resuming…",
    runFailed: "The answer failed: {message}",
    requestFailed: "The request failed: {message}",
    finishedIn: "Done in {seconds} s",
    diagramError: "Mermaid could not draw this diagram.",
    diagramPending: "Drawing the diagram…",
    diagramStreaming: "Diagram (drawn when the block is complete)",
    diagramLabel: "Diagram",
    loadFailed: "Could not load: {message}",
    skipLink: "Skip to the message box",
    openMenu: "Show chats",
    closeMenu: "Hide chats",
    dismiss: "Dismiss",
    serverNotice: "Notice from this server",
    chatNotFound: "That chat does not exist any more.",
    deleteHint: "Delete chat (Delete key)",
    progressThinking: "Thinking…",
    progressTool: "Running the tool {name}…",
    progressResult: "Reading the result of {name}…",
    cutOff: "Cut off —",
    continue: "continue",
    continueLabel: "Ask the model to continue where the answer was cut off",
    continuePrompt: "Your answer was cut off. Continue exactly where you stopped, without repeating anything.",
    copyCode: "Copy code",
    showError: "Show the error",
    diagramTools: "Diagram tools",
    zoomIn: "Zoom in",
    zoomOut: "Zoom out",
    zoomFit: "Fit to view",
    fullScreen: "Full screen",
    downloadSvg: "Download as SVG",
    downloadPng: "Download as PNG",
    close: "Close",
  },
  ja: {
    appTitle: "tokenrelay",
    sessions: "チャット",
    sessionsLabel: "これまでのチャット",
    noSessions: "まだチャットはありません。",
    untitled: "（無題）",
    newChat: "新しいチャット",
    deleteSession: "チャットを削除",
    deleteConfirm: "このチャットと履歴を削除しますか？",
    language: "言語",
    apiKey: "APIキー",
    apiKeyPrompt: "このサーバーにはAPIキーが必要です。キーはこのブラウザにだけ保存されます。",
    apiKeyInvalid: "APIキーが受け付けられませんでした。",
    save: "保存",
    cancel: "キャンセル",
    inputLabel: "メッセージ",
    placeholder: "質問を入力…（Enterで送信、Shift+Enterで改行）",
    send: "送信",
    stop: "停止",
    stopLabel: "生成を停止",
    stopping: "停止中…",
    emptyTitle: "何でも質問してください",
    emptyHint:
      "回答は書かれたそばから表示されます。テキスト・Markdown・ノートブックのファイルを添付すると、その内容について質問できます。",
    attach: "ドキュメントを添付",
    attachHint: "テキスト、Markdown、Jupyterノートブック（.ipynb）",
    attaching: "{name} を添付しています…",
    attached: "ドキュメント: {name}（{chars}文字）",
    attachedName: "ドキュメント: {name}",
    truncated:
      "{name} はモデルのコンテキストに収まりません。モデルに渡すのは先頭の {kept} / {total} 文字（{pct}%）だけで、残りは省きました。",
    attachFailed: "{name} を添付できませんでした: {message}",
    presets: "ドキュメントへの質問",
    you: "あなた",
    assistant: "回答",
    answerDone: "回答が完了しました。",
    tool: "ツール: {name}",
    toolInput: "入力",
    toolResult: "結果",
    toolError: "エラー",
    toolRunning: "実行中…",
    toolDone: "完了",
    toolFailed: "失敗",
    showReasoning: "推論を表示",
    hideReasoning: "推論を隠す",
    copy: "コピー",
    copyLabel: "回答をコピー",
    copied: "コピーしました",
    retry: "再試行",
    retryLabel: "もう一度質問を送る",
    stopped: "停止しました。",
    interrupted: "中断",
    failed: "失敗",
    running: "実行中…",
    connectionLost: "回答が終わる前に接続が切れました。",
    cancelledElsewhere: "回答は完了前に停止されました（別のウィンドウまたはサーバーによる）。",
    reconnecting: "接続が切れました。再開しています…",
    runFailed: "回答に失敗しました: {message}",
    requestFailed: "リクエストに失敗しました: {message}",
    finishedIn: "{seconds} 秒で完了",
    diagramError: "Mermaidでこの図を描けませんでした。",
    diagramPending: "図を描いています…",
    diagramStreaming: "図（ブロックが完成したら描画します）",
    diagramLabel: "図",
    loadFailed: "読み込めませんでした: {message}",
    skipLink: "メッセージ入力欄へ移動",
    openMenu: "チャット一覧を表示",
    closeMenu: "チャット一覧を閉じる",
    dismiss: "閉じる",
    serverNotice: "このサーバーからのお知らせ",
    chatNotFound: "そのチャットはもうありません。",
    deleteHint: "チャットを削除（Deleteキー）",
    progressThinking: "考えています…",
    progressTool: "ツール {name} を実行しています…",
    progressResult: "{name} の結果を読んでいます…",
    cutOff: "途中で切れました —",
    continue: "続ける",
    continueLabel: "回答が切れたところから続けるようモデルに頼む",
    continuePrompt: "回答が途中で切れました。繰り返さずに、止まったところからそのまま続けてください。",
    copyCode: "コードをコピー",
    showError: "エラーを表示",
    diagramTools: "図の操作",
    zoomIn: "拡大",
    zoomOut: "縮小",
    zoomFit: "全体を表示",
    fullScreen: "全画面表示",
    downloadSvg: "SVGでダウンロード",
    downloadPng: "PNGでダウンロード",
    close: "閉じる",
  },
};

/** The UI language: a stored choice, else the browser's first language we have, else English. */
export function detectLanguage(stored, browserLanguages) {
  if (stored && stored in MESSAGES) return stored;
  for (const tag of browserLanguages || []) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (base in MESSAGES) return base;
  }
  return "en";
}

export function translate(lang, key, args) {
  const table = MESSAGES[lang] || MESSAGES.en;
  let text = key in table ? table[key] : MESSAGES.en[key] ?? key;
  if (args) {
    text = text.replace(/\{(\w+)\}/g, (whole, name) => (name in args ? String(args[name]) : whole));
  }
  return text;
}

/** Relabel every element under `root` that carries data-i18n attributes. */
export function applyLanguage(lang, root = document) {
  const each = (attr, apply) => {
    for (const el of root.querySelectorAll(`[${attr}]`)) {
      let args;
      try {
        args = el.dataset.i18nArgs ? JSON.parse(el.dataset.i18nArgs) : undefined;
      } catch {
        continue;
      }
      apply(el, translate(lang, el.getAttribute(attr), args));
    }
  };
  each("data-i18n", (el, text) => {
    el.textContent = text;
  });
  each("data-i18n-aria", (el, text) => el.setAttribute("aria-label", text));
  each("data-i18n-title", (el, text) => el.setAttribute("title", text));
  each("data-i18n-placeholder", (el, text) => el.setAttribute("placeholder", text));
}
