//! Task components written by hand in the WebAssembly text format, for abuse that a Rust guest
//! cannot express: Rust never grows a table or declares a huge one.
//!
//! Each component implements the `task` world with one core module and no imports. Its `run`
//! never returns normally, so the result type only has to be declared, not produced.

/// The world's types, exported under their WIT names as the component model requires of types
/// that an exported function uses, and the `run` export lifted from the core module `$m`.
const TASK_EXPORTS: &str = r#"
  (core instance $i (instantiate $m))
  (type $job-context' (record (field "job-id" string) (field "attempt" u32)
    (field "max-attempts" u32) (field "task-name" string) (field "tenant" string)))
  (export $job-context "job-context" (type $job-context'))
  (type $transient' (record (field "message" string) (field "retry-after-ms" (option u64))
    (field "code" (option string))))
  (export $transient "transient-error" (type $transient'))
  (type $permanent' (record (field "message" string) (field "code" (option string))))
  (export $permanent "permanent-error" (type $permanent'))
  (type $task-error' (variant (case "transient" $transient) (case "permanent" $permanent)))
  (export $task-error "task-error" (type $task-error'))
  (func $run (param "ctx" $job-context) (param "payload" (list u8))
    (result (result (list u8) (error $task-error)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc"))))
  (export "run" (func $run))
"#;

/// A bump allocator for the arguments the host copies in; nothing is ever freed.
const REALLOC: &str = r#"
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $at) (local.get $size)))
      (local.get $at))
"#;

/// A task whose `run` grows its table by `step` elements at a time until a growth is refused,
/// then traps. It starts with a table of one element.
pub fn table_grower(step: u32) -> Vec<u8> {
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    (table $t 1 funcref)
    {REALLOC}
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (block $refused
        (loop $grow
          (br_if $refused (i32.eq
            (table.grow $t (ref.null func) (i32.const {step})) (i32.const -1)))
          (br $grow)))
      unreachable))
  {TASK_EXPORTS})"#
    );
    ::wat::parse_str(text).expect("the table grower is valid text")
}

/// A task that declares a table of `elements` elements up front; its `run` traps at once.
pub fn huge_table(elements: u32) -> Vec<u8> {
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    (table $t {elements} funcref)
    {REALLOC}
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      unreachable))
  {TASK_EXPORTS})"#
    );
    ::wat::parse_str(text).expect("the huge-table task is valid text")
}
