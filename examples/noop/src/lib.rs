//! Does nothing: ignores its payload and succeeds with an empty result. It measures what the
//! runner itself costs per job (the sandbox, the queue), since the task adds no work of its own.

use wasm_runner_guest::{Context, TaskError, export_task};

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    Ok(Vec::new())
}

export_task!(run);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            job_id: "job-1".into(),
            attempt: 1,
            max_attempts: 3,
            task_name: "noop".into(),
            tenant: "default".into(),
        }
    }

    #[test]
    fn succeeds_with_an_empty_result() {
        assert_eq!(run(&ctx(), Vec::new()).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn ignores_its_payload() {
        let payload = br#"{"anything": [1, 2, 3]}"#.to_vec();
        assert_eq!(run(&ctx(), payload).unwrap(), Vec::<u8>::new());
        assert_eq!(run(&ctx(), vec![0xff; 1024]).unwrap(), Vec::<u8>::new());
    }
}
