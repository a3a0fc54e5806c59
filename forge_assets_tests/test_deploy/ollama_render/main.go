// Command ollama_render executes an Ollama TEMPLATE with Go's text/template the way the Ollama server does, so
// Forge's tests can compare it byte for byte with transformers' rendering of the training chat template.
//
// What it mirrors (ollama/ollama: template/template.go, api/types.go, server/routes.go, tools/template.go):
//   - Parse: template.New("").Option("missingkey=zero").Funcs(funcs), with the funcs Ollama registers
//     (json, currentDate, yesterdayDate, toTypeScriptType); {{ .Response }} is appended when the template uses
//     neither .Messages nor .Response.
//   - Request data: messages and tools decoded into the same shapes as Ollama's API types (roles lowercased,
//     tool-call arguments and tool properties decoded from JSON objects, PropertyType as string-or-list).
//   - /api/chat: the model's SYSTEM is prepended as a system message when the first message is not one.
//   - Execute: with a prompt and a suffix the template gets {Prompt, Suffix, Response, Think, ...}; otherwise
//     messages are collated (consecutive messages of one role, tool messages excepted, merged with "\n\n"; all
//     system contents joined into .System) and the template gets {System, Messages, Tools, Response, Think, ...},
//     where messages and tools are the template views Ollama builds: tool-call arguments and tool properties become
//     plain Go maps (text/template ranges over them in sorted key order; printing one gives compact JSON).
//   - The tool-call tag Ollama's tool parser derives from the template (first text inside {{ if .ToolCalls }}).
//
// Input (stdin): {"template": "...", "model_system": "", "cases": [{"messages": [...], "tools": [...],
// "prompt": "", "suffix": ""}]}. Output (stdout): {"vars": [...], "tool_tag": "...", "renders": [{"out": "...",
// "error": "..."}]}. Standard library only; no network.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// ---- request types (the JSON shapes of Ollama's api package) ----

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

func (m *Message) UnmarshalJSON(b []byte) error {
	type alias Message
	var a alias
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	*m = Message(a)
	m.Role = strings.ToLower(m.Role)
	return nil
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type ToolCallFunction struct {
	Index     int          `json:"index"`
	Name      string       `json:"name"`
	Arguments ArgumentsMap `json:"arguments"`
}

// ArgumentsMap: Ollama keeps arguments in insertion order but hands the template a plain map (ToMap), so the
// order is not kept here. Values decode as encoding/json decodes into `any`, as Ollama's ordered map does.
type ArgumentsMap struct{ m map[string]any }

func (a *ArgumentsMap) UnmarshalJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("tool call arguments must be a JSON object: %w", err)
	}
	a.m = m
	return nil
}

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

func (pt PropertyType) String() string {
	if len(pt) == 0 {
		return ""
	}
	if len(pt) == 1 {
		return pt[0]
	}
	return fmt.Sprintf("%v", []string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *ToolPropertiesMap `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

func (tp ToolProperty) ToTypeScriptType() string {
	if len(tp.AnyOf) > 0 {
		var types []string
		for _, a := range tp.AnyOf {
			types = append(types, a.ToTypeScriptType())
		}
		return strings.Join(types, " | ")
	}
	if len(tp.Type) == 0 {
		return "any"
	}
	var types []string
	for _, t := range tp.Type {
		switch t {
		case "string", "boolean", "null":
			types = append(types, t)
		case "number", "integer":
			types = append(types, "number")
		case "array":
			types = append(types, "any[]")
		case "object":
			types = append(types, "Record<string, any>")
		default:
			types = append(types, "any")
		}
	}
	return strings.Join(types, " | ")
}

// ToolPropertiesMap: nested properties; templates reach them through ToMap (plain map) or Len, as in Ollama.
type ToolPropertiesMap struct{ m map[string]ToolProperty }

func (t *ToolPropertiesMap) UnmarshalJSON(b []byte) error {
	return json.Unmarshal(b, &t.m)
}

func (t ToolPropertiesMap) MarshalJSON() ([]byte, error) { return json.Marshal(t.m) }

func (t *ToolPropertiesMap) ToMap() map[string]ToolProperty {
	if t == nil {
		return nil
	}
	return t.m
}

func (t *ToolPropertiesMap) Len() int {
	if t == nil {
		return 0
	}
	return len(t.m)
}

type ToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties *ToolPropertiesMap `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

// ---- the views Ollama hands the template ----

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string { b, _ := json.Marshal(t); return string(b) }

type templateTools []templateTool

func (t templateTools) String() string { b, _ := json.Marshal(t); return string(b) }

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

func toolsView(tools []Tool) templateTools {
	if tools == nil {
		return nil
	}
	out := make(templateTools, len(tools))
	for i, t := range tools {
		p := t.Function.Parameters
		out[i] = templateTool{Type: t.Type, Items: t.Items, Function: templateToolFunction{
			Name: t.Function.Name, Description: t.Function.Description,
			Parameters: templateToolFunctionParameters{Type: p.Type, Defs: p.Defs, Items: p.Items, Required: p.Required,
				Properties: templateProperties(p.Properties.ToMap())},
		}}
	}
	return out
}

func messagesView(msgs []*Message) []*templateMessage {
	if msgs == nil {
		return nil
	}
	out := make([]*templateMessage, len(msgs))
	for i, m := range msgs {
		var calls []templateToolCall
		for _, tc := range m.ToolCalls {
			calls = append(calls, templateToolCall{ID: tc.ID, Function: templateToolCallFunction{
				Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments.m)}})
		}
		out[i] = &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images,
			ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID}
	}
	return out
}

// collate: all system contents joined for .System; consecutive same-role messages (tool messages excepted) merged.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			out[len(out)-1].Content += "\n\n" + msgs[i].Content
		} else {
			out = append(out, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), out
}

// ---- parsing, as Ollama's template.Parse ----

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string {
		return time.Now().AddDate(0, 0, -1).Format("2006-01-02")
	},
	"toTypeScriptType": func(v any) string {
		if p, ok := v.(ToolProperty); ok {
			return p.ToTypeScriptType()
		}
		if p, ok := v.(*ToolProperty); ok && p != nil {
			return p.ToTypeScriptType()
		}
		return "any"
	},
}

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var out []string
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			out = append(out, identifiers(c)...)
		}
		return out
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil
		}
		return identifiers(n.Pipe)
	case *parse.IfNode:
		return branchIdentifiers(&n.BranchNode)
	case *parse.RangeNode:
		return branchIdentifiers(&n.BranchNode)
	case *parse.WithNode:
		return branchIdentifiers(&n.BranchNode)
	case *parse.PipeNode:
		var out []string
		if n == nil {
			return nil
		}
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				out = append(out, identifiers(a)...)
			}
		}
		return out
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

func branchIdentifiers(b *parse.BranchNode) []string {
	out := identifiers(b.Pipe)
	out = append(out, identifiers(b.List)...)
	if b.ElseList != nil {
		out = append(out, identifiers(b.ElseList)...)
	}
	return out
}

func vars(t *template.Template) []string {
	set := map[string]bool{}
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		for _, n := range tt.Root.Nodes {
			for _, id := range identifiers(n) {
				set[strings.ToLower(id)] = true
			}
		}
	}
	var out []string
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// toolTag: the tag Ollama's tool-call parser looks for in model output, taken from the template like tools.parseTag.
func toolTag(t *template.Template) string {
	isToolCalls := func(n *parse.IfNode) bool {
		for _, c := range n.Pipe.Cmds {
			for _, a := range c.Args {
				if f, ok := a.(*parse.FieldNode); ok && slices.Contains(f.Ident, "ToolCalls") {
					return true
				}
			}
		}
		return false
	}
	var findIf func([]parse.Node) *parse.IfNode
	findIf = func(nodes []parse.Node) *parse.IfNode {
		for _, node := range nodes {
			var lists []*parse.ListNode
			switch n := node.(type) {
			case *parse.IfNode:
				if isToolCalls(n) {
					return n
				}
				lists = []*parse.ListNode{n.List, n.ElseList}
			case *parse.ListNode:
				lists = []*parse.ListNode{n}
			case *parse.RangeNode:
				lists = []*parse.ListNode{n.List, n.ElseList}
			case *parse.WithNode:
				lists = []*parse.ListNode{n.List, n.ElseList}
			}
			for _, l := range lists {
				if l != nil {
					if r := findIf(l.Nodes); r != nil {
						return r
					}
				}
			}
		}
		return nil
	}
	var findText func([]parse.Node) *parse.TextNode
	findText = func(nodes []parse.Node) *parse.TextNode {
		for _, node := range nodes {
			switch n := node.(type) {
			case *parse.TextNode:
				if len(bytes.TrimSpace(n.Text)) > 0 {
					return n
				}
			case *parse.ListNode:
				if r := findText(n.Nodes); r != nil {
					return r
				}
			case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
				var b *parse.BranchNode
				switch x := n.(type) {
				case *parse.IfNode:
					b = &x.BranchNode
				case *parse.RangeNode:
					b = &x.BranchNode
				case *parse.WithNode:
					b = &x.BranchNode
				}
				if r := findText(b.List.Nodes); r != nil {
					return r
				}
				if b.ElseList != nil {
					if r := findText(b.ElseList.Nodes); r != nil {
						return r
					}
				}
				return nil
			case *parse.ActionNode:
				return nil
			}
		}
		return nil
	}
	tc := findIf(t.Tree.Root.Nodes)
	if tc == nil {
		return "{"
	}
	tn := findText(tc.List.Nodes)
	if tn == nil {
		return "{"
	}
	tag, _, _ := strings.Cut(strings.ReplaceAll(string(tn.Text), "\r\n", "\n"), "{")
	if tag = strings.TrimSpace(tag); tag == "" {
		return "{"
	}
	return tag
}

// ---- main ----

type request struct {
	Template    string `json:"template"`
	ModelSystem string `json:"model_system"`
	Cases       []struct {
		Messages []Message `json:"messages"`
		Tools    []Tool    `json:"tools"`
		Prompt   string    `json:"prompt"`
		Suffix   string    `json:"suffix"`
	} `json:"cases"`
}

type rendered struct {
	Out   string `json:"out"`
	Error string `json:"error,omitempty"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	vs := vars(tmpl)
	if !slices.Contains(vs, "messages") && !slices.Contains(vs, "response") {
		fmt.Fprintln(os.Stderr, "legacy (prompt/response) templates are not mirrored here")
		os.Exit(4)
	}
	out := struct {
		Vars    []string   `json:"vars"`
		ToolTag string     `json:"tool_tag"`
		Renders []rendered `json:"renders"`
	}{Vars: vs, ToolTag: toolTag(tmpl)}
	for _, c := range req.Cases {
		var b bytes.Buffer
		var data map[string]any
		if c.Prompt != "" && c.Suffix != "" {
			data = map[string]any{"Prompt": c.Prompt, "Suffix": c.Suffix, "Response": "", "Think": false,
				"ThinkLevel": "", "IsThinkSet": false}
		} else {
			msgs := c.Messages
			if req.ModelSystem != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
				msgs = append([]Message{{Role: "system", Content: req.ModelSystem}}, msgs...)
			}
			system, collated := collate(msgs)
			data = map[string]any{"System": system, "Messages": messagesView(collated), "Tools": toolsView(c.Tools),
				"Response": "", "Think": false, "ThinkLevel": "", "IsThinkSet": false}
		}
		if err := tmpl.Execute(&b, data); err != nil {
			out.Renders = append(out.Renders, rendered{Error: err.Error()})
			continue
		}
		out.Renders = append(out.Renders, rendered{Out: b.String()})
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		os.Exit(5)
	}
}
